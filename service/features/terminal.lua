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
-- the "counted" marks (ms)
--
-- "Once": the terminal's hash KEYS[i] .. ':n' remembers each counted needle
-- (field 'T' or 'L' + needle, value '1' counted or '0' fell outside the ring)
-- until round 4 removes it, so a replay of this round after a crash before
-- round 3 counts nothing twice.
--
-- Returns {counted_string, ring_1 .. ring_n}: counted byte i = 1 when operation i
-- counted now; ring_i is the terminal string before operation i for 'r' and 't'
-- ('' when the terminal had none), '' for labels.

local kinds = ARGV[1]
local n = #kinds
if ARGV[6] == '1' and state_lost(n + 1) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end
local needles = ARGV[2]
local slots = tonumber(ARGV[3])
local term_ttl = ARGV[4]
local mark_ttl = ARGV[5]
local TS = slots * BUCKET
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
  local ts = unpack('<I6', needle, 5)
  local t = call('GET', tk) or ''
  local done = 0
  local count = kind ~= 'r'
  if kind == 't' or kind == 'G' or kind == 'F' then
    local marks = tk .. ':n'
    local field = (kind == 't' and 'T' or 'L') .. needle
    if call('HEXISTS', marks, field) == 1 then
      count = false
    else
      local labels = (kind == 't') and 0 or 1
      local frauds = (kind == 'F') and 1 or 0
      if count_at_terminal(tk, t, ts, 1 - labels, labels, frauds, slots, term_ttl) then
        done = 1
      end
      call('HSET', marks, field, done)
      if not expiring[marks] then
        expiring[marks] = true
        call('PEXPIRE', marks, mark_ttl)
      end
    end
  elseif count then
    local frauds = (kind == 'f') and 1 or 0
    if count_at_terminal(tk, t, ts, 0, 1, frauds, slots, term_ttl) then
      done = 1
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
