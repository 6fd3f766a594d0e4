-- fraudstream: the terminal day buckets, shared by update.lua and labels.lua.
-- Redis scripts cannot import each other: redis_store.py loads each of them
-- with this prelude in front.
--
-- A terminal key holds a ring of `slots` buckets of 16 bytes,
-- (u32 day, u32 transactions, u32 labels, u32 fraud labels), day k at index k % slots.

local BUCKET = 16

-- Count one event at time `ts` (ms) in terminal key `tk`, whose value is `t`
-- ('' when absent): `tx` transactions, `labels` labels and `frauds` fraud labels.
-- A missing or mis-sized ring is replaced by an empty one (TTL `term_ttl` ms);
-- a slot holding an older day starts the new day and keeps the key alive; a
-- slot holding a later day is left alone. Returns true when the event counted.
local function count_at_terminal(tk, t, ts, tx, labels, frauds, slots, term_ttl)
  local day = math.floor(ts / 86400000)
  local so = (day % slots) * BUCKET
  local sday, txs, labs, frs = 0, 0, 0, 0
  if #t < slots * BUCKET then
    redis.call('SET', tk, string.rep('\0', slots * BUCKET), 'PX', term_ttl)
  else
    sday, txs, labs, frs = struct.unpack('<I4I4I4I4', t, so + 1)
  end
  if sday == day then
    redis.call('SETRANGE', tk, so + 4,
      struct.pack('<I4I4I4', txs + tx, labs + labels, frs + frauds))
    return true
  elseif sday < day then
    redis.call('SETRANGE', tk, so, struct.pack('<I4I4I4I4', day, tx, labels, frauds))
    redis.call('PEXPIRE', tk, term_ttl)
    return true
  end
  return false
end
