-- issue 13 (attribution). Prepended when the script is built (store/redis/mod.rs): the
-- `#!lua` line (every key declared), then lib.lua (b36, header, trimmed_by, next_event_id,
-- now_ms).
-- Registers ONE consent request for ONE pair, atomically: purge registrations past their
-- retention, refuse a retry with other fields, check the request budget, store, then
-- attribute the replies recorded before it (record.lua left their history positions in u:).
-- Called by `RedisStore::register_request` (requests.rs); formats in codec.rs. All keys share
-- the pair's shard hash tag (one cluster slot).
--
-- KEYS[1] requests     {p:sNN}:r:<pair>  HASH request message id -> "<sent at>,<trailer>"
-- KEYS[2] request log  {p:sNN}:q:<pair>  ZSET request message id, score = sent at (ms)
-- KEYS[3] pending      {p:sNN}:u:<pair>  HASH paired message id -> "pos,pos,..." history
--                                        positions of replies that matched no registration
-- KEYS[4] history      {p:sNN}:h:<pair>
-- KEYS[5] consent      {p:sNN}:c:<pair>
-- KEYS[6] lapse        {p:sNN}:x:<pair>
-- KEYS[7] event stream {p:sNN}:e
-- KEYS[8] trimmed mark {p:sNN}:trimmed
-- ARGV[1] request message id
-- ARGV[2] the registration "<sent at b36>,<trailer>"
-- ARGV[3] sent at (ms)
-- ARGV[4] now (ms, the app's clock): registrations sent before now - retention are purged
-- ARGV[5] retention (ms)
-- ARGV[6] the budget "<max>:<window ms>;<max>:<window ms>..."
-- ARGV[7] event retention (ms)
-- ARGV[8] the pair "<business>:<customer>"
-- Returns { 0, attributed, announced } registered; { 1 } the same registration before;
-- { 2 } the id registered with other fields; { 3, sent at, sent at, ... } over budget (every
-- retained registration's sent-at, for RedisStore to compute the answer). Nothing is written
-- unless 0.

local now = tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local sent = tonumber(ARGV[3])

-- Purge registrations past their retention (the keys also expire as a whole, see below).
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now - retention))
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end

local known = redis.call('HGET', KEYS[1], ARGV[1])
if known then
  if known == ARGV[2] then return { 1 } end
  return { 2 }
end

-- THE BUDGET RULE, the twin of `domain::attribution::fits` (src/domain/attribution.rs);
-- change both together: for every limit, no window of its length holding `at` may hold more
-- than `max` requests; a request at `e` shares a window with `at` when |at - e| < window.
local function budget_fits(times, at, limits)
  for _, l in ipairs(limits) do
    local near, starts = {}, {}
    for _, e in ipairs(times) do
      if math.abs(e - at) < l.w then
        near[#near + 1] = e
        if e <= at then starts[#starts + 1] = e end
      end
    end
    starts[#starts + 1] = at
    for _, s in ipairs(starts) do
      local inside = 0
      for _, e in ipairs(near) do
        if e >= s and e < s + l.w then inside = inside + 1 end
      end
      if inside + 1 > l.max then return false end
    end
  end
  return true
end

local limits = {}
for max, w in string.gmatch(ARGV[6], '(%d+):(%d+)') do
  limits[#limits + 1] = { max = tonumber(max), w = tonumber(w) }
end
local logged = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local times = {}
for i = 2, #logged, 2 do times[#times + 1] = tonumber(logged[i]) end
if not budget_fits(times, sent, limits) then
  local out = { 3 }
  for _, t in ipairs(times) do out[#out + 1] = t end
  return out
end

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], sent, ARGV[1])
-- Both keys live until the newest registration's retention ends (relative to the app's
-- clock, as the purge above).
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local ttl = tonumber(newest[2]) + retention - now
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
redis.call('PEXPIRE', KEYS[2], string.format('%.0f', ttl))

-- Replies recorded before this registration.
local trailer = string.sub(ARGV[2], string.find(ARGV[2], ',', 1, true) + 1)
local attributed, announced = 0, 0
local pending = redis.call('HGET', KEYS[3], ARGV[1])
if pending then
  redis.call('HDEL', KEYS[3], ARGV[1])
  local c = redis.call('GET', KEYS[5])
  local x = redis.call('GET', KEYS[6])
  for pos in string.gmatch(pending, '%d+') do
    local entry = redis.call('LINDEX', KEYS[4], pos)
    if entry then
      local id = string.sub(entry, 2, 17)
      redis.call('LSET', KEYS[4], pos, entry .. trailer)
      attributed = attributed + 1
      if x and string.sub(x, 1, 16) == id then
        x = x .. trailer
        redis.call('SET', KEYS[6], x)
      end
      if c and string.sub(c, 1, 16) == id then
        c = c .. trailer
        -- KEEPTTL: a temporary grant's consent key keeps its native expiry.
        redis.call('SET', KEYS[5], c, 'KEEPTTL')
        -- The twin of `domain::attribution::late_attribution`: announce a current decision
        -- that is a denial, a permanent grant or a temporary grant still live.
        local h = header(c, 17)
        if not h then
          return redis.error_reply('CORRUPT unreadable current decision')
        end
        if h.r ~= 0 or h.e > now_ms() then
          local min = now_ms() - tonumber(ARGV[7])
          if min < 0 then min = 0 end
          local minid = string.format('%.0f', min) .. '-0'
          local gone = trimmed_by(KEYS[7], min, minid)
          if gone then
            redis.call('SET', KEYS[8], gone)
          end
          redis.call('XADD', KEYS[7], 'MINID', '=', minid, next_event_id(KEYS[7]), 'k',
            h.r == 2 and 'D' or 'G', 'd', ARGV[8] .. ':' .. string.sub(c, 17))
          announced = announced + 1
        end
      end
    end
  end
end
return { 0, attributed, announced }
