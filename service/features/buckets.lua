-- fraudstream: the terminal day buckets, shared by update.lua and labels.lua.
-- Redis scripts cannot import each other: redis_store.py loads each of them
-- with this prelude in front.
--
-- A terminal key holds a ring of `slots` buckets of 12 bytes,
-- (u32 day, u32 transactions, u32 fraud labels), day k at index k % slots.

-- Count one event at time `ts` (ms) in column `col` (1 = transactions,
-- 2 = fraud labels) of terminal key `tk`, whose value is `t` ('' when absent).
-- A missing or mis-sized ring is replaced by an empty one (TTL `term_ttl` ms);
-- a slot holding an older day starts the new day and keeps the key alive; a
-- slot holding a later day is left alone. Returns true when the event counted.
local function count_at_terminal(tk, t, ts, col, slots, term_ttl)
  local day = math.floor(ts / 86400000)
  local so = (day % slots) * 12
  local sday, txs, frauds = 0, 0, 0
  if #t < slots * 12 then
    redis.call('SET', tk, string.rep('\0', slots * 12), 'PX', term_ttl)
  else
    sday, txs, frauds = struct.unpack('<I4I4I4', t, so + 1)
  end
  if sday == day then
    local count = col == 1 and txs or frauds
    redis.call('SETRANGE', tk, so + 4 * col, struct.pack('<I4', count + 1))
    return true
  elseif sday < day then
    local fresh = col == 1 and struct.pack('<I4I4I4', day, 1, 0)
      or struct.pack('<I4I4I4', day, 0, 1)
    redis.call('SETRANGE', tk, so, fresh)
    redis.call('PEXPIRE', tk, term_ttl)
    return true
  end
  return false
end

