-- fraudstream on Redis Cluster, round 1 of a batch: the card part of update.lua,
-- run once per master on the transactions whose card key it holds (see
-- cluster_store.py; redis_cluster.py unpacks KEYS and ARGV in front of it).
--
-- KEYS[i] = card key of record i (i = 1..n), then the state markers of the slots
-- those keys are in (checked when ARGV[4] = '1': none missing, or nothing is
-- counted and the call fails with FRAUDSTREAM_STATE_LOST).
-- ARGV[1] = the n 28-byte records, each with the "terminal pending" flag (8) set
-- ARGV[2] = card retention (ms), ARGV[3] = card TTL (ms)
--
-- Returns {status_string, history_1 .. history_n, hints}: status byte i = card outcome
-- (0 appended, 1 duplicate, 2 too late, 3 inserted, as in update.lua) + 8 when the
-- terminal has still to count the transaction: it is new, or a duplicate whose
-- record still carries the pending flag (a replay after a crash between rounds).
-- history_i is the card history before the transaction (with it, when inserted).
-- hints: u32 per record, the byte offset it was written at (round 3 looks there
-- first: a later record of the batch inserted before it, or a trim, moves it).
-- The appending, trimming, compaction and insertion are history.lua's
-- add_to_history (loaded in front), as in update.lua.

local recs = ARGV[1]
local n = #recs / RECORD
if ARGV[4] == '1' and state_lost(n + 1) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end

local retention = tonumber(ARGV[2])
local card_ttl = ARGV[3]
local PENDING = 8
local sub, char, byte = string.sub, string.char, string.byte
local floor = math.floor

local out = {}
local status = {}
local hints = {}
for i = 1, n do
  local rec = sub(recs, (i - 1) * RECORD + 1, i * RECORD)
  local st, h, at = add_to_history(KEYS[i], rec, struct.unpack('<I6', rec, 5), retention, card_ttl)
  if st == 0 or st == 3 then
    st = st + PENDING
  elseif st == 1 and floor(byte(h, at + 11) / PENDING) % 2 == 1 then
    st = 1 + PENDING
  end
  out[i + 1] = h
  status[i] = char(st)
  hints[i] = struct.pack('<I4', at)
end
out[1] = table.concat(status)
out[n + 2] = table.concat(hints)
return out
