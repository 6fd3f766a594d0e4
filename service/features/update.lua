-- fraudstream: count a batch of transactions in ONE call and return, per
-- transaction, its card history and its terminal's day buckets as they were
-- before it (see redis_store.py for the layouts; count_at_terminal is in
-- buckets.lua, claim_id in claims.lua and the card history's functions in
-- history.lua, all loaded in front of this script).
--
-- KEYS[s(i-1)+1] = card key of transaction i, KEYS[s(i-1)+2] = its terminal key,
-- and, when ids are claimed (s = 3; otherwise s = 2), KEYS[3i] = its snapshot key.
-- ARGV[1] = the batch's 28-byte records, concatenated, in batch order
-- ARGV[2] = card retention (ms), ARGV[3] = card TTL (ms)
-- ARGV[4] = terminal day slots, ARGV[5] = terminal TTL (ms)
-- ARGV[6] = most valid records a card keeps (besides this call's)
-- ARGV[7] = '1' when the last KEY is the state marker: without it nothing is
-- counted and the call fails with FRAUDSTREAM_STATE_LOST (see service/state.py).
-- ARGV[8] = the batch's 9-byte id claims (service/snapshots.py), concatenated
-- in batch order, or '' to claim nothing; ARGV[9] = the claims' TTL (s);
-- ARGV[10] = most bytes of card histories and terminal strings this call keeps
-- after its new claims (claims.lua's keep_found; 0: none).
--
-- Returns {status_string, terminal_1 .. terminal_n, history_1 .. history_n}.
-- status byte i = card outcome + 4 * (counted at the terminal); card outcome:
-- 0 new and appended (history_i is the history before it: the caller appends
-- the record it sent), 1 duplicate, 2 too late, 3 new and inserted out of order
-- (history_i already holds it). Status 8: the id was claimed before with other
-- content (a conflict): nothing counted, terminal_i and history_i are ''.
-- Status + 16: a replay of a transaction counted before and not snapshotted
-- yet: nothing counted now; status, terminal_i and history_i are what that first
-- count returned (claims.lua's keep_found, written by the call that claimed it,
-- for up to ARGV[10] bytes per call).
-- terminal_i is the terminal string before this transaction's increment ('' when
-- the terminal has none).
--
-- The card part is history.lua's add_to_history.

if ARGV[7] == '1' and state_lost(#KEYS) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end

local recs = ARGV[1]
local retention = tonumber(ARGV[2])
local card_ttl = ARGV[3]
local slots = tonumber(ARGV[4])
local term_ttl = ARGV[5]
local cap = tonumber(ARGV[6])
local claims = ARGV[8] or ''
local claim_ttl = ARGV[9]
local stride = 2
if claims ~= '' then
  stride = 3
end

local RS = RECORD                    -- record size
local TS = slots * BUCKET            -- terminal string size
local sub, char, byte = string.sub, string.char, string.byte
local unpack = struct.unpack
local call = redis.call

-- Count transaction `rec` (event time `ts`) at its card `ck` and terminal `tk`;
-- returns its status and the card history and terminal string it found.
local function count(rec, ts, ck, tk)
  local st, h = add_to_history(ck, rec, ts, retention, card_ttl, cap)

  local t = call('GET', tk) or ''
  if st == 0 or st == 3 then
    if count_at_terminal(tk, t, ts, 1, 0, 0, slots, term_ttl) then
      st = st + 4
    end
    if #t < TS then
      t = ''  -- it was replaced by an empty ring: the terminal had none
    end
  end
  return st, h, t
end

local n = #recs / RS
local out = {}
local status = {}

-- Every claim first, as a separate claim call would (claiming inside the
-- counting loop measured ~10 % more Redis CPU).
local claimed = {}
local budget = tonumber(ARGV[10] or '0')
if stride == 3 then
  for i = 1, n do
    claimed[i] = claim_id(KEYS[3 * i], sub(claims, 9 * i - 8, 9 * i), claim_ttl)
  end
end

-- Snapshot key -> the transaction of this call that claimed it (its replays
-- in the same call get what it found), and the transactions whose found state
-- is kept, written after the loop with the AOF and replicas off.
local first = {}
local kept = {}
for i = 1, n do
  local off = (i - 1) * RS
  local rec = sub(recs, off + 1, off + RS)
  local ts = unpack('<I6', rec, 5)
  local st, h, t = 8, '', ''
  local claim = claimed[i]
  if claim == 1 then
    local j = first[KEYS[3 * i]]
    if j then
      st, t, h = byte(status[j]), out[j + 1], out[n + j + 1]
    else
      st, t, h = found_at(KEYS[3 * i])
    end
    if st then
      st = st + 16
    end
  end
  if claim ~= 2 and not (claim == 1 and st) then
    st, h, t = count(rec, ts, KEYS[stride * (i - 1) + 1], KEYS[stride * (i - 1) + 2])
    if claim == 0 and budget >= #t + #h then
      budget = budget - #t - #h
      first[KEYS[3 * i]] = i
      kept[#kept + 1] = i
    end
  end
  out[i + 1] = t
  out[n + i + 1] = h
  status[i] = char(st)
end

if #kept > 0 then
  redis.set_repl(redis.REPL_NONE)
  for _, i in ipairs(kept) do
    keep_found(KEYS[3 * i], byte(status[i]), out[i + 1], out[n + i + 1])
  end
  redis.set_repl(redis.REPL_ALL)
end

out[1] = table.concat(status)
return out
