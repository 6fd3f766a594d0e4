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
-- The appending, trimming, compaction and insertion are update.lua's.

local recs = ARGV[1]
local n = #recs / 28
if ARGV[4] == '1' then
  for i = n + 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      return redis.error_reply('FRAUDSTREAM_STATE_LOST')
    end
  end
end

local retention = tonumber(ARGV[2])
local card_ttl = ARGV[3]
local RS = 28
local DAY = 86400000
local STALE = 4
local PENDING = 8
local unpack = struct.unpack
local find, sub, char, byte = string.find, string.sub, string.char, string.byte
local call = redis.call
local floor = math.floor

local function alloc_class(size)
  if size <= 128 then
    return size
  end
  local group = 2 ^ (floor(math.log(size - 1) / math.log(2)) - 2)
  return math.ceil(size / group) * group
end

local out = {}
local status = {}
local hints = {}
for i = 1, n do
  local off = (i - 1) * RS
  local rec = sub(recs, off + 1, off + RS)
  local ts = unpack('<I6', rec, 5)
  local ck = KEYS[i]
  local h = call('GET', ck)
  local st = 0
  local at = 0
  if not h then
    h = ''
    call('SET', ck, rec, 'PX', card_ttl)
  else
    local len = #h
    local newest = unpack('<I6', h, len - RS + 5)
    if ts <= newest - retention then
      st = 2
    elseif ts > newest then
      local cutoff = ts - retention
      if len >= STALE * RS and unpack('<I6', h, (STALE - 1) * RS + 5) <= cutoff then
        local head = STALE * RS
        while head < len and unpack('<I6', h, head + 5) <= cutoff do
          head = head + RS
        end
        call('SET', ck, sub(h, head + 1) .. rec, 'PX', card_ttl)
        at = len - head
      else
        call('APPEND', ck, rec)
        at = len
        if alloc_class(len + 6) < len + RS + 6 then
          call('BITOP', 'OR', ck, ck)
          call('PEXPIRE', ck, card_ttl)
        elseif floor(ts / DAY) > floor(newest / DAY) then
          call('PEXPIRE', ck, card_ttl)
        end
      end
    else
      local needle = sub(rec, 1, 10)
      local pos = find(h, needle, 1, true)
      while pos do
        if (pos - 1) % RS == 0 then
          st = 1
          at = pos - 1
          if floor(byte(h, pos + 10) / PENDING) % 2 == 1 then
            st = 1 + PENDING
          end
          break
        end
        pos = find(h, needle, pos + 1, true)
      end
      if st == 0 then
        st = 3
        local p = len
        while p > 0 and unpack('<I6', h, p - RS + 5) > ts do
          p = p - RS
        end
        h = sub(h, 1, p) .. rec .. sub(h, p + 1)
        call('SET', ck, h, 'PX', card_ttl)
        at = p
      end
    end
  end
  if st == 0 or st == 3 then
    st = st + PENDING
  end
  out[i + 1] = h
  status[i] = char(st)
  hints[i] = struct.pack('<I4', at)
end
out[1] = table.concat(status)
out[n + 2] = table.concat(hints)
return out
