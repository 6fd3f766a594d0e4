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
