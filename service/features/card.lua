-- fraudstream on Redis Cluster, round 1 of a batch: the card part of update.lua,
-- run once per master on the transactions whose card key it holds (see
-- cluster_store.py; redis_cluster.py unpacks KEYS and ARGV in front of it).
--
-- KEYS[i] = card key of record i (i = 1..n), then the state markers of the slots
-- those keys are in (checked when ARGV[5] = '1': none missing, or nothing is
-- counted and the call fails with FRAUDSTREAM_STATE_LOST).
-- ARGV[1] = the n 28-byte records, each with the "terminal pending" flag (8) set
-- ARGV[2] = card retention (ms), ARGV[3] = card TTL (ms), ARGV[4] = most valid
-- records a card keeps (besides this call's; see history.lua)
--
-- Returns {status_string, history_1 .. history_n, hints}: status byte i = card outcome
-- (0 appended, 1 duplicate, 2 too late, 3 inserted, as in update.lua) + 8 when the
-- terminal has still to count the transaction: it is new, or its record still
-- carries the pending flag from a run of this batch that failed or crashed
-- between rounds (a replay: reported as inserted, its first time in the call).
-- history_i is the card history before the transaction (with it, when inserted).
-- hints: u32 per record, the byte offset it was written at (round 3 looks there
-- first: a later record of the batch inserted before it, or a trim, moves it).
-- The appending, trimming, compaction and insertion are history.lua's
-- add_to_history (loaded in front), as in update.lua.

local recs = ARGV[1]
local n = #recs / RECORD
if ARGV[5] == '1' and state_lost(n + 1) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end

local retention = tonumber(ARGV[2])
local card_ttl = ARGV[3]
local cap = tonumber(ARGV[4])
local PENDING = 8
local sub, char, byte = string.sub, string.char, string.byte
local floor = math.floor

-- Whether one of records 1..i of this call has this needle.
local function among_first(needle, i)
  local at = find_record(recs, needle)
  return at ~= nil and at < i * RECORD
end

-- History h as record i found it in the first run of this batch: without the
-- records that a run of it that failed or crashed between rounds wrote for the
-- records after i (still pending, their needle not among records 1..i). The
-- same h when there are none, which is the case but after a failure.
local function as_first_found(h, i)
  local drop = nil
  for p = 0, #h - RECORD, RECORD do
    if floor(byte(h, p + 11) / PENDING) % 2 == 1 and not among_first(sub(h, p + 1, p + 10), i) then
      drop = drop or {}
      drop[#drop + 1] = p
    end
  end
  if not drop then
    return h
  end
  local kept, from = {}, 0
  for _, p in ipairs(drop) do
    kept[#kept + 1] = sub(h, from + 1, p)
    from = p + RECORD
  end
  kept[#kept + 1] = sub(h, from + 1)
  return table.concat(kept)
end

local out = {}
local status = {}
local hints = {}
for i = 1, n do
  local rec = sub(recs, (i - 1) * RECORD + 1, i * RECORD)
  local st, h, at = add_to_history(KEYS[i], rec, struct.unpack('<I6', rec, 5), retention, card_ttl, cap)
  if st == 0 or st == 3 then
    st = st + PENDING
  else
    if st == 1 and floor(byte(h, at + 11) / PENDING) % 2 == 1 and not among_first(sub(rec, 1, 10), i - 1) then
      -- Still pending, and not written by an earlier record of this call (a
      -- duplicate within the batch): written by a run of this batch that failed
      -- or crashed between rounds. Reported as new, inserted (its record is in
      -- h), as that run reported it, and counted at the terminal if not yet.
      st = 3 + PENDING
    end
    -- A duplicate, a too-late record or a replay: its features come from h.
    h = as_first_found(h, i)
  end
  out[i + 1] = h
  status[i] = char(st)
  hints[i] = struct.pack('<I4', at)
end
out[1] = table.concat(status)
out[n + 2] = table.concat(hints)
return out
