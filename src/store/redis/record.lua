#!lua
-- Records ONE decision for ONE pair, atomically: de-duplicate, arbitrate, append to the
-- history, update the current decision and the due index, and publish the event.
-- Called by `RedisStore::record` (mod.rs); formats are described in codec.rs.
-- All keys are declared and share the pair's shard hash tag (one cluster slot).
--
-- KEYS[1] consent      {p:sNN}:c:<pair>  current decision; PEXPIREAT for temporary grants
-- KEYS[2] lapse        {p:sNN}:x:<pair>  the temporary grant, kept after KEYS[1] expires
-- KEYS[3] history      {p:sNN}:h:<pair>
-- KEYS[4] dedup        {p:sNN}:d:<dedup id>
-- KEYS[5] event stream {p:sNN}:e
-- KEYS[6] due index    {p:sNN}:due
-- KEYS[7] trimmed mark {p:sNN}:trimmed  newest event id trimmed from the stream
-- ARGV[1] the new consent value "<decided ms>|<rank>|<expires ms>|<dedup id>|<json>"
-- ARGV[2] received at (ms)
-- ARGV[3] dedup retention (ms)
-- ARGV[4] event kind to publish if applied ("g", "d", or "" for none)
-- ARGV[5] event retention (ms)
-- ARGV[6] the pair as due-index member "<business>:<customer>"
-- Returns 0 applied, 1 stale, 2 duplicate.

-- Header of a consent value (twin in claim_expired.lua and codec::encode_consent).
local function parse(v)
  local t, r, e, id, json = string.match(v, '^(%-?%d+)|([012])|(%-?%d*)|(%x+)|(.*)$')
  if not t then return nil end
  return { t = tonumber(t), r = tonumber(r), e = e, id = id, json = json }
end

-- Byte-wise string order, like Rust's `str::cmp` (Lua's `<` on strings follows the locale).
local function cmp_bytes(a, b)
  if a == b then return 0 end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- =====================================================================================
-- THE ORDERING RULE: which of two decisions for one pair wins. 1 = a wins, -1 = b wins,
-- 0 = the same decision. This is the twin of `domain::rules::precedence`
-- (src/domain/rules.rs); change both together.
--   1. the later decided_at (ms) wins;
--   2. on a tie, the higher rank: deny 2 > permanent grant 1 > temporary grant 0;
--   3. on a tie, the larger dedup id (byte order);
--   4. all equal: the same decision (a duplicate).
-- decided_at values are integers below 2^53, so Lua numbers hold them exactly.
-- =====================================================================================
local function precedence(a, b)
  if a.t ~= b.t then return a.t > b.t and 1 or -1 end
  if a.r ~= b.r then return a.r > b.r and 1 or -1 end
  return cmp_bytes(a.id, b.id)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local new = parse(ARGV[1])
if not new then
  return redis.error_reply('CORRUPT new consent value has no header')
end

if redis.call('EXISTS', KEYS[4]) == 1 then
  return 2
end

local current = redis.call('GET', KEYS[1])
if not current then
  current = redis.call('GET', KEYS[2])
end
local applied = true
if current then
  local cur = parse(current)
  if not cur then
    return redis.error_reply('CORRUPT unreadable consent value at ' .. KEYS[1])
  end
  local p = precedence(new, cur)
  if p == 0 then
    return 2
  end
  applied = p > 0
end

redis.call('SET', KEYS[4], '1', 'PX', ARGV[3])

if not applied then
  redis.call('RPUSH', KEYS[3], 's|' .. ARGV[2] .. '|' .. new.json)
  return 1
end
redis.call('RPUSH', KEYS[3], 'a|' .. ARGV[2] .. '|' .. new.json)

local now = now_ms()
if new.r == 0 then
  -- Temporary grant: the consent key expires natively at the grant's own expiry; the lapse
  -- record keeps it so a check after the expiry still answers EXPIRED.
  redis.call('SET', KEYS[2], ARGV[1])
  if tonumber(new.e) > now then
    redis.call('SET', KEYS[1], ARGV[1], 'PXAT', new.e)
  else
    redis.call('DEL', KEYS[1])
  end
  redis.call('ZADD', KEYS[6], new.e, ARGV[6])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[6], ARGV[6])
end

if ARGV[4] ~= '' then
  local min = now - tonumber(ARGV[5])
  if min < 0 then min = 0 end
  local minid = string.format('%.0f', min) .. '-0'
  -- Redis 7.0 does not record trimmed ids (max-deleted-entry-id only follows XDEL), so keep
  -- the newest id this XADD is about to trim: read_events reports cursors before it.
  local gone = redis.call('XREVRANGE', KEYS[5], '(' .. minid, '-', 'COUNT', 1)
  if gone[1] then
    redis.call('SET', KEYS[7], gone[1][1])
  end
  redis.call('XADD', KEYS[5], 'MINID', '=', minid, '*', 'k', ARGV[4], 'd', new.json)
end
return 0
