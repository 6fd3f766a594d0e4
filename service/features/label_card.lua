-- fraudstream on Redis Cluster, round 1 of a batch of labels: the card part of
-- labels.lua, run once per master on the labels whose card key it holds (see
-- cluster_store.py; redis_cluster.py unpacks KEYS and ARGV in front of it).
--
-- KEYS[i] = card key of label i (i = 1..n), then the state markers of their slots
-- (checked when ARGV[4] = '1', as in card.lua).
-- ARGV[1] = 10-byte needles, ARGV[2] = one byte per label, '1' fraud, '0' genuine,
-- ARGV[3] = card retention (ms)
--
-- Returns {todo, hints}: one byte per label, what the terminal must do: 0 nothing (the record
-- was labelled before), 1 count the label, every time (no record to flag: as in
-- labels.lua), 2 count it once (the record got its labelled flag now, with the
-- "label pending" flag 16, or still carries that flag: a replay); and a u32 per
-- label, the byte offset of its record (0 when none), where round 3 looks first.

local needles = ARGV[1]
local n = #needles / 10
if ARGV[4] == '1' then
  for i = n + 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      return redis.error_reply('FRAUDSTREAM_STATE_LOST')
    end
  end
end
local kinds = ARGV[2]
local retention = tonumber(ARGV[3])
local RS = 28
local PENDING = 16
local unpack = struct.unpack
local find, sub, byte, char = string.find, string.sub, string.byte, string.char
local floor = math.floor
local call = redis.call

local out = {}
local hints = {}
for i = 1, n do
  local needle = sub(needles, (i - 1) * 10 + 1, i * 10)
  local ts = unpack('<I6', needle, 5)
  local fraud = byte(kinds, i) == 49
  local h = call('GET', KEYS[i])
  local todo = 1
  local at = 0
  if h and ts > unpack('<I6', h, #h - RS + 5) - retention then
    local pos = find(h, needle, 1, true)
    while pos and (pos - 1) % RS ~= 0 do
      pos = find(h, needle, pos + 1, true)
    end
    if pos then
      at = pos - 1
      local flags = byte(h, pos + 10)
      if floor(flags / 4) % 2 == 1 or flags % 2 == 1 then
        todo = (floor(flags / PENDING) % 2 == 1) and 2 or 0
      else
        flags = flags + 4 + (fraud and 1 or 0) + PENDING
        call('SETRANGE', KEYS[i], pos + 9, char(flags))
        todo = 2
      end
    end
  end
  out[i] = char(todo)
  hints[i] = struct.pack('<I4', at)
end
return {table.concat(out), table.concat(hints)}
