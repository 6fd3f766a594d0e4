-- fraudstream on Redis Cluster, rounds 3 and 4 of a batch (see cluster_store.py;
-- redis_cluster.py unpacks KEYS and ARGV in front of it, after history.lua's
-- find_record), once per master.
--
-- ARGV[1] = 'clear': KEYS[i] = a card key, ARGV[2] = 10-byte needles, ARGV[3] =
-- one flag byte per key (8 "terminal pending", 16 "label pending"), ARGV[4] = a
-- u32 per key, where the record was written (a hint: checked, else searched):
-- the record of each needle loses that flag (the terminal counted it).
-- ARGV[1] = 'forget': KEYS[i] = a terminal's ':n' hash, ARGV[2] = 12-byte
-- fields: the marks of round 2 are removed (the card flags are cleared).
-- Returns the number of keys.

local mode = ARGV[1]
local items = ARGV[2]
local call = redis.call
if mode == 'clear' then
  local flags = ARGV[3]
  local hints = ARGV[4]
  local sub, byte, char = string.sub, string.byte, string.char
  local floor = math.floor
  for i = 1, #KEYS do
    local needle = sub(items, (i - 1) * 10 + 1, i * 10)
    local bit = byte(flags, i)
    local at = struct.unpack('<I4', hints, (i - 1) * 4 + 1)
    local f = nil
    local head = call('GETRANGE', KEYS[i], at, at + 10)
    if sub(head, 1, 10) == needle and at % RECORD == 0 then
      f = byte(head, 11)
    else
      local h = call('GET', KEYS[i])
      at = h and find_record(h, needle)
      if at then
        f = byte(h, at + 11)
      end
    end
    if f and floor(f / bit) % 2 == 1 then
      call('SETRANGE', KEYS[i], at + 10, char(f - bit))
    end
  end
else
  local sub = string.sub
  for i = 1, #KEYS do
    call('HDEL', KEYS[i], sub(items, (i - 1) * 12 + 1, i * 12))
  end
end
return #KEYS
