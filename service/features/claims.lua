-- fraudstream: the id claim of one transaction (see service/snapshots.py),
-- shared by the snapshot store's claim script and update.lua. Redis scripts
-- cannot import each other: each is loaded with this file in front.
--
-- `key` is the transaction's snapshot key, `claim` its 9 bytes (the snapshot
-- layout's version byte and the transaction's content digest), `ttl` seconds.
-- Returns 0 new (claimed now), 1 replay (the same digest, or a version-1
-- snapshot, which has none), 2 conflict (another digest).

local function claim_id(key, claim, ttl)
  -- A new id (the common case) costs one call.
  if redis.call('SET', key, claim, 'NX', 'EX', ttl) then
    return 0
  end
  local held = redis.call('GETRANGE', key, 0, 8)
  if held == '' then
    redis.call('SET', key, claim, 'EX', ttl)
    return 0
  elseif held == claim or string.byte(held, 1) == 1 then
    return 1
  end
  return 2
end

-- What a transaction found when it was counted, kept after its claim until its
-- snapshot replaces both (service/snapshots.py, FOUND_MARK): the 8 bytes below
-- (read as feature set and model version 0xFFFFFFFF, so the snapshot script
-- overwrites them and a reader sees "no snapshot yet"), its status byte, the
-- length of its terminal string (u32), that string and its card history. A
-- replay of the transaction before its snapshot is written (a crash, or a
-- duplicate in the next pipelined batch) gets these back instead of the state
-- as it is now, with what was counted after it.
local FOUND = '\255\255\255\255\255\255\255\255'

-- Keep status `st`, terminal string `t` and card history `h` after the claim
-- at `key` (APPEND: no Lua string is made from them). The caller turns the
-- AOF and replicas off around it (redis.set_repl): a few KB per transaction,
-- replaced within two batches, are not worth persisting; a Redis restarted or
-- failed over in between has the claim alone, and a replay then is computed
-- from the state as it is now, as without this.
local found_headers = {}
local function keep_found(key, st, t, h)
  local tl = #t
  local slot = st * 4294967296 + tl
  local header = found_headers[slot]
  if not header then
    header = FOUND .. struct.pack('<BI4', st, tl)
    found_headers[slot] = header
  end
  redis.call('APPEND', key, header)
  if tl > 0 then
    redis.call('APPEND', key, t)
  end
  if #h > 0 then
    redis.call('APPEND', key, h)
  end
end

-- The status, terminal string and card history kept at `key` by keep_found,
-- or nil when it holds none (a claim alone, or a snapshot).
local function found_at(key)
  local held = redis.call('GET', key)
  if not held or #held < 22 or string.sub(held, 10, 17) ~= FOUND then
    return nil
  end
  local st, tl = struct.unpack('<BI4', held, 18)
  return st, string.sub(held, 23, 22 + tl), string.sub(held, 23 + tl)
end
