-- fraudstream on Redis Cluster, round 1 of a batch of labels: the card part of
-- labels.lua, run once per master on the labels whose card key it holds (see
-- cluster_store.py; redis_cluster.py unpacks KEYS and ARGV in front of it).
--
-- history.lua's flag_label, loaded in front, flags the record, as in labels.lua.
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
if ARGV[4] == '1' and state_lost(n + 1) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end
local kinds = ARGV[2]
local retention = tonumber(ARGV[3])
local PENDING = 16
local sub, byte, char = string.sub, string.byte, string.char

local out = {}
local hints = {}
for i = 1, n do
  local needle = sub(needles, (i - 1) * 10 + 1, i * 10)
  local ck = KEYS[i]
  local at, flagged, flags = flag_label(ck, redis.call('GET', ck), needle, byte(kinds, i) == 49, PENDING, retention)
  local todo = 1
  if flagged or (at and math.floor(flags / PENDING) % 2 == 1) then
    todo = 2
  elseif at then
    todo = 0
  end
  out[i] = char(todo)
  hints[i] = struct.pack('<I4', at or 0)
end
return {table.concat(out), table.concat(hints)}
