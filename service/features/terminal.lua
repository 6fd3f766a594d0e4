-- fraudstream on Redis Cluster, round 2 of a batch: the terminal part of
-- update.lua and labels.lua, run once per master on the operations whose
-- terminal key it holds, in batch order (see cluster_store.py; redis_cluster.py
-- unpacks KEYS and ARGV, and buckets.lua's count_at_terminal is loaded in front).
--
-- KEYS[i] = terminal key of operation i (i = 1..n), then the state markers of
-- their slots (checked when ARGV[6] = '1', as in card.lua).
-- ARGV[1] = one kind byte per operation: 'r' read the ring, 't' count a
-- transaction once and read the ring, 'g'/'f' count a genuine/fraud label
-- every time, 'G'/'F' count a genuine/fraud label once
-- ARGV[2] = the operations' 10-byte needles (id hash, event time)
-- ARGV[3] = terminal day slots, ARGV[4] = terminal TTL (ms), ARGV[5] = TTL of
-- the marks (ms)
-- ARGV[7] = one byte per operation, its mark's occurrence: for 'r', 'g' and 'f',
-- how many earlier operations of the call have the same needle and mark; 0 else
--
-- Marks: the terminal's hash KEYS[i] .. ':n' keeps, for each operation, what it
-- did and returned (field: mark byte 'T' for 't', 'L' for 'G'/'F', 'R' for 'r',
-- 'l' for 'g'/'f', the needle, the occurrence byte; value: the counted byte,
-- then for 't' and 'r' the ring as found) until round 4 removes them. An
-- operation whose mark is there was done by a run of this batch that failed or
-- crashed after this round (on this master or another): it counts nothing again
-- and returns what it returned then, so the replay's features are the first
-- run's, and a label counted "every time" is still counted once per occurrence.
--
-- Returns {counted_string, ring_1 .. ring_n}: counted byte i = 1 when operation i
-- counted (now or in the run it replays); ring_i is the terminal string before
-- operation i for 'r' and 't' ('' when the terminal had none), '' for labels.

local kinds = ARGV[1]
local n = #kinds
if ARGV[6] == '1' and state_lost(n + 1) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end
local needles = ARGV[2]
local slots = tonumber(ARGV[3])
local term_ttl = ARGV[4]
local mark_ttl = ARGV[5]
local occurrences = ARGV[7]
local TS = slots * BUCKET
local MARKS = {t = 'T', G = 'L', F = 'L', r = 'R', g = 'l', f = 'l'}
local unpack = struct.unpack
local sub, byte, char = string.sub, string.byte, string.char
local call = redis.call

local out = {}
local counted = {}
local expiring = {}
for i = 1, n do
  local kind = sub(kinds, i, i)
  local tk = KEYS[i]
  local needle = sub(needles, (i - 1) * 10 + 1, i * 10)
  local marks = tk .. ':n'
  local field = MARKS[kind] .. needle .. sub(occurrences, i, i)
  local t
  local done = 0
  local seen = call('HGET', marks, field)
  if seen then
    done = byte(seen, 1)
    t = sub(seen, 2)
  else
    t = call('GET', tk) or ''
    if kind ~= 'r' then
      local ts = unpack('<I6', needle, 5)
      local txs = (kind == 't') and 1 or 0
      local frauds = (kind == 'f' or kind == 'F') and 1 or 0
      if count_at_terminal(tk, t, ts, txs, 1 - txs, frauds, slots, term_ttl) then
        done = 1
      end
    end
    local reads = kind == 't' or kind == 'r'
    call('HSET', marks, field, reads and char(done) .. t or char(done))
    if not expiring[marks] then
      expiring[marks] = true
      call('PEXPIRE', marks, mark_ttl)
    end
  end
  if kind == 'r' or kind == 't' then
    if #t < TS then
      t = ''
    end
    out[i + 1] = t
  else
    out[i + 1] = ''
  end
  counted[i] = char(done)
end
out[1] = table.concat(counted)
return out
