-- issue 13 (attribution). Prepended when the script is built (store/redis/mod.rs): the
-- `#!lua` line (every key declared), then lib.lua (b36, header, trimmed_by, next_event_id,
-- now_ms) and requests_lib.lua (the checks and the store step, shared with layout v2's
-- v2_requests.lua).
-- Registers ONE consent request for ONE pair, atomically: purge registrations past their
-- retention, refuse a retry with other fields, check the request budget, store, then
-- attribute the replies recorded before it (found by RedisStore, which reads and decodes the
-- history: the script checks that the history has not grown since, else nothing is written
-- and RedisStore reads again).
-- Called by `RedisStore::register_request` (requests.rs); formats in codec.rs. All keys share
-- the pair's shard hash tag (one cluster slot).
--
-- KEYS[1] requests     {p:sNN}:r:<pair>  HASH request message id -> "<sent at>,<trailer>"
-- KEYS[2] request log  {p:sNN}:q:<pair>  ZSET request message id, score = sent at (ms)
-- KEYS[3] history      {p:sNN}:h:<pair>
-- KEYS[4] consent      {p:sNN}:c:<pair>
-- KEYS[5] lapse        {p:sNN}:x:<pair>
-- KEYS[6] event stream {p:sNN}:e
-- KEYS[7] trimmed mark {p:sNN}:trimmed
-- ARGV[1] request message id
-- ARGV[2] the registration "<sent at b36>,<trailer>"
-- ARGV[3] sent at (ms)
-- ARGV[4] now (ms, the app's clock): registrations sent before now - retention are purged
-- ARGV[5] retention (ms)
-- ARGV[6] the budget "<max>:<window ms>;<max>:<window ms>..."
-- ARGV[7] event retention (ms)
-- ARGV[8] the pair "<business>:<customer>"
-- ARGV[9] the history length RedisStore read
-- ARGV[10] the replies to attribute: "<position>:<dedup id as 32 hex>;..." (RedisStore found
--          them unattributed, answering this request, received within the retention)
-- Returns { 0, attributed, announced } registered; { 1 } the same registration before;
-- { 2 } the id registered with other fields; { 3, sent at, sent at, ... } over budget (every
-- retained registration's sent-at, for RedisStore to compute the answer); { 4 } the history
-- grew since RedisStore read it (read again). Nothing is registered unless 0 (registrations
-- past their retention may be purged whatever the answer).

local now = tonumber(ARGV[4])

local function hex_to_bytes(hex)
  return (string.gsub(hex, '%x%x', function(b) return string.char(tonumber(b, 16)) end))
end

-- Purge, retry check, budget (requests_lib.lua): an answer, or nil to go on.
local refused = registration_checks(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), now,
  tonumber(ARGV[5]), ARGV[6])
if refused then return refused end

if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[9]) then
  return { 4 }
end

store_registration(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), now,
  tonumber(ARGV[5]))

-- Replies recorded before this registration.
local trailer = string.sub(ARGV[2], string.find(ARGV[2], ',', 1, true) + 1)
local attributed, announced = 0, 0
local c = redis.call('GET', KEYS[4])
local x = redis.call('GET', KEYS[5])
for pos, hex in string.gmatch(ARGV[10], '(%d+):(%x+)') do
  local entry = redis.call('LINDEX', KEYS[3], pos)
  local id = hex_to_bytes(hex)
  -- The entry RedisStore decoded: a history entry starts with its outcome and its dedup id.
  if not entry or string.sub(entry, 2, 17) ~= id then
    return redis.error_reply('CORRUPT history entry moved')
  end
  redis.call('LSET', KEYS[3], pos, entry .. trailer)
  attributed = attributed + 1
  if x and string.sub(x, 1, 16) == id then
    x = x .. trailer
    redis.call('SET', KEYS[5], x)
  end
  if c and string.sub(c, 1, 16) == id then
    c = c .. trailer
    -- KEEPTTL: a temporary grant's consent key keeps its native expiry.
    redis.call('SET', KEYS[4], c, 'KEEPTTL')
    -- The twin of `domain::attribution::late_attribution`: announce a current decision that
    -- is a denial, a permanent grant or a temporary grant still live.
    local h = header(c, 17)
    if not h then
      return redis.error_reply('CORRUPT unreadable current decision')
    end
    if h.r ~= 0 or h.e > now_ms() then
      local min = now_ms() - tonumber(ARGV[7])
      if min < 0 then min = 0 end
      local minid = string.format('%.0f', min) .. '-0'
      local gone = trimmed_by(KEYS[6], min, minid)
      if gone then
        redis.call('SET', KEYS[7], gone)
      end
      redis.call('XADD', KEYS[6], 'MINID', '=', minid, next_event_id(KEYS[6]), 'k',
        h.r == 2 and 'D' or 'G', 'd', ARGV[8] .. ':' .. string.sub(c, 17))
      announced = announced + 1
    end
  end
end
return { 0, attributed, announced }
