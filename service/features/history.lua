-- fraudstream: the card history, shared by update.lua and labels.lua (single
-- node) and card.lua and label_card.lua (Redis Cluster). Redis scripts cannot
-- import each other: each is loaded with this prelude in front.
--
-- A card key holds the card's records of RECORD bytes, sorted by event time (see
-- redis_store.py for the layout); a record's first 10 bytes (id hash, event time)
-- are its needle.
--
-- Why it is shaped like this: every Lua string costs ~1 ns per byte to create
-- (Redis hashes whole strings), so the common case, an in-order event, creates
-- no string from the history other than the one GET that is returned, and
-- writes with APPEND. Duplicates and out-of-order events take the slow path.

local RECORD = 28
local HISTORY_DAY = 86400000
local STALE = 4                      -- trim once this many records are stale

-- True when one of KEYS[first..#KEYS], the state markers, is missing
-- (service/state.py): the caller then counts nothing and fails.
local function state_lost(first)
  for i = first, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      return true
    end
  end
  return false
end

-- Size of the allocation holding `size` bytes (jemalloc size classes: four
-- per doubling). Only used to decide when to compact a string that APPEND grew;
-- with another allocator the guess costs memory or time, never correctness.
local function alloc_class(size)
  if size <= 128 then
    return size
  end
  local group = 2 ^ (math.floor(math.log(size - 1) / math.log(2)) - 2)
  return math.ceil(size / group) * group
end

-- The 0-based byte offset of the record whose needle is `needle` in history `h`
-- (a match at a record boundary), or nil.
local function find_record(h, needle)
  local pos = string.find(h, needle, 1, true)
  while pos and (pos - 1) % RECORD ~= 0 do
    pos = string.find(h, needle, pos + 1, true)
  end
  return pos and pos - 1
end

-- Per card key, the oldest event time this call added (or found) there.
local oldest_in_call = {}

-- The byte offset of the first record of history `h` (`len` bytes) newer than
-- `stale_to`: the records before it are stale (older than the retention).
local function first_valid(h, len, stale_to)
  local unpack = struct.unpack
  local v = 0
  while v < len and unpack('<I6', h, v + 5) <= stale_to do
    v = v + RECORD
  end
  return v
end


-- Add record `rec` (event time `ts`) to the history of card key `ck`, keeping
-- `retention` ms of it (TTL `card_ttl` ms) and at most `cap` valid records
-- (those within the retention of the newest): the oldest go. Returns the
-- outcome, the history as found (with the record when inserted) and the
-- record's byte offset in the stored history: 0 new and appended, 1 duplicate
-- (the offset of the record already there), 2 too late (offset 0): older than
-- the retention, or, on a card holding `cap` valid records, older than the
-- oldest of them (so a record the cap dropped is never counted again),
-- 3 new and inserted out of order. The features are computed from the history
-- as found: a card over its cap drops its oldest records after this one is counted.
-- (Unlike the stale records, those are not kept for a replay of the call: on a
-- Redis Cluster, a batch replayed after a crash between rounds finds them gone.)
local function add_to_history(ck, rec, ts, retention, card_ttl, cap)
  local call, unpack = redis.call, struct.unpack
  local h = call('GET', ck)
  if not h then
    call('SET', ck, rec, 'PX', card_ttl)
    oldest_in_call[ck] = ts
    return 0, '', 0
  end
  local len = #h
  local newest = unpack('<I6', h, len - RECORD + 5)
  if ts <= newest - retention then
    return 2, h, 0
  end
  local keep_from = math.min(ts, oldest_in_call[ck] or ts)
  oldest_in_call[ck] = keep_from
  local full = len >= cap * RECORD  -- may hold `cap` valid records
  if ts > newest then
    -- In order: append in place.
    -- Stale records are trimmed lazily, once there are STALE of them (trimming
    -- copies the history): those older than the new newest - retention, and
    -- older than `retention` before every record this call added to the card.
    -- A replay of the call (cluster rounds interrupted) finds what it found.
    local cutoff = keep_from - retention
    if full then
      local v = first_valid(h, len, ts - retention)
      local e = v + math.max(0, len - v + RECORD - cap * RECORD)
      if e > v then
        local head = first_valid(h, v, cutoff)
        call('SET', ck, string.sub(h, head + 1, v) .. string.sub(h, e + 1) .. rec, 'PX', card_ttl)
        return 0, h, (v - head) + (len - e)
      end
    end
    if len >= STALE * RECORD and unpack('<I6', h, (STALE - 1) * RECORD + 5) <= cutoff then
      local head = STALE * RECORD
      while head < len and unpack('<I6', h, head + 5) <= cutoff do
        head = head + RECORD
      end
      call('SET', ck, string.sub(h, head + 1) .. rec, 'PX', card_ttl)
      return 0, h, len - head
    end
    call('APPEND', ck, rec)
    if alloc_class(len + 6) < len + RECORD + 6 then
      -- This APPEND outgrew the allocation, which Redis then doubles:
      -- copy to an exact-size string. BITOP drops the TTL.
      call('BITOP', 'OR', ck, ck)
      call('PEXPIRE', ck, card_ttl)
    elseif math.floor(ts / HISTORY_DAY) > math.floor(newest / HISTORY_DAY) then
      -- The TTL (retention + 1 day) is refreshed once per event day.
      call('PEXPIRE', ck, card_ttl)
    end
    return 0, h, len
  end
  -- Same time or earlier than the newest: look for the same id and time at
  -- a record boundary, else insert after every record with ts <= t.
  local at = find_record(h, string.sub(rec, 1, 10))
  if at then
    return 1, h, at
  end
  local v = 0
  if full then
    v = first_valid(h, len, newest - retention)
    if len - v >= cap * RECORD and ts < unpack('<I6', h, v + 5) then
      return 2, h, 0
    end
  end
  local p = len
  while p > 0 and unpack('<I6', h, p - RECORD + 5) > ts do
    p = p - RECORD
  end
  h = string.sub(h, 1, p) .. rec .. string.sub(h, p + 1)
  if full and len + RECORD - v > cap * RECORD then
    local e = v + (len + RECORD - v - cap * RECORD)
    call('SET', ck, string.sub(h, 1, v) .. string.sub(h, e + 1), 'PX', card_ttl)
    return 3, h, math.max(0, p - (e - v))
  end
  call('SET', ck, h, 'PX', card_ttl)
  return 3, h, p
end

-- Flag the labelled record with needle `needle` of card key `ck` (history `h`,
-- or nil): bit 2 "labelled", bit 0 for a fraud, and `extra` (another flag, or
-- 0). Returns the record's byte offset (nil when it is absent or older than
-- `retention` ms before the newest), whether this call flagged it, and its
-- flags before. A record that already says labelled (bit 2, or bit 0 alone: a
-- fraud flag written before labels had their own bit) is left as it is.
local function flag_label(ck, h, needle, fraud, extra, retention)
  local unpack = struct.unpack
  if not h or unpack('<I6', needle, 5) <= unpack('<I6', h, #h - RECORD + 5) - retention then
    return nil, false, 0
  end
  local at = find_record(h, needle)
  if not at then
    return nil, false, 0
  end
  local flags = string.byte(h, at + 11)
  if math.floor(flags / 4) % 2 == 1 or flags % 2 == 1 then
    return at, false, flags
  end
  -- SETRANGE keeps the key's TTL.
  redis.call('SETRANGE', ck, at + 10, string.char(flags + 4 + (fraud and 1 or 0) + extra))
  return at, true, flags
end
