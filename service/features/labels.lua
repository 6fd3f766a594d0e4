-- fraudstream: record a batch of labels (see redis_store.py for the layouts).
--
-- KEYS[2i-1] = card key of label i, KEYS[2i] = its terminal key.
-- ARGV[1] = 10-byte needles (id hash u32, event time u48), concatenated
-- ARGV[2] = one byte per label, '1' for fraud, '0' for genuine
-- ARGV[3] = card retention (ms), ARGV[4] = terminal day slots, ARGV[5] = terminal TTL (ms)
-- ARGV[6] = '1' when the last KEY is the state marker (as in update.lua).
--
-- The card record of the labelled transaction gets its "labelled" flag (bit 2
-- of byte 10, 0-based, of the record), and its fraud flag (bit 0) for a fraud.
-- The terminal bucket of the transaction's day gets +1 label, and +1 fraud
-- label for a fraud (count_at_terminal, buckets.lua), unless the card record
-- already carried the labelled flag: a repeated label counts once. Records
-- older than the card's retention count as absent.
-- Returns the number of terminal increments.

if ARGV[6] == '1' and state_lost(#KEYS) then
  return redis.error_reply('FRAUDSTREAM_STATE_LOST')
end

local needles = ARGV[1]
local kinds = ARGV[2]
local retention = tonumber(ARGV[3])
local slots = tonumber(ARGV[4])
local term_ttl = ARGV[5]

local unpack = struct.unpack
local sub, byte = string.sub, string.byte
local call = redis.call

local counted = 0
for i = 1, #needles / 10 do
  local needle = sub(needles, (i - 1) * 10 + 1, i * 10)
  local ts = unpack('<I6', needle, 5)
  local fraud = byte(kinds, i) == 49
  local ck = KEYS[2 * i - 1]
  local at, flagged = flag_label(ck, call('GET', ck), needle, fraud, 0, retention)
  -- A label of a record labelled before counts nothing; one without a record, every time.
  if flagged or not at then
    local tk = KEYS[2 * i]
    if count_at_terminal(tk, call('GET', tk) or '', ts, 0, 1, fraud and 1 or 0, slots, term_ttl) then
      counted = counted + 1
    end
  end
end
return counted
