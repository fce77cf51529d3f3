-- Claims lapsed temporary grants of ONE shard and publishes one EXPIRED event for each.
-- Called by `RedisStore::claim_expired` (mod.rs) for every shard.
--
-- Exactly once across replicas: the ZREM of a due-index member inside this script IS the
-- claim. Whichever replica runs first removes it and publishes; the others no longer see it.
--
-- No shebang on purpose: the pair keys (KEYS-less, built from ARGV[3] + the member) are only
-- known after reading the index. They share the shard's hash tag, so on Cluster they are in
-- this script's slot; legacy (flag-less) scripts may access such keys.
--
-- KEYS[1] due index    {p:sNN}:due  (score = expiry ms, member = "<business>:<customer>")
-- KEYS[2] event stream {p:sNN}:e
-- KEYS[3] trimmed mark {p:sNN}:trimmed  newest event id trimmed from the stream
-- ARGV[1] now (ms): claim grants with expiry <= now
-- ARGV[2] at most this many members per call
-- ARGV[3] the shard's key prefix "{p:sNN}:"
-- ARGV[4] event retention (ms)
-- Returns { events published, members claimed }.

-- Header of a consent value (twin in record.lua and codec::encode_consent).
local function parse(v)
  local t, r, e, id, json = string.match(v, '^(%-?%d+)|([012])|(%-?%d*)|(%x+)|(.*)$')
  if not t then return nil end
  return { t = tonumber(t), r = tonumber(r), e = e, id = id, json = json }
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local t = redis.call('TIME')
local min = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4])
if min < 0 then min = 0 end
local minid = string.format('%.0f', min) .. '-0'

local published = 0
for i = 1, #due, 2 do
  local member, score = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], member)
  local v = redis.call('GET', ARGV[3] .. 'c:' .. member)
  if not v then
    v = redis.call('GET', ARGV[3] .. 'x:' .. member)
  end
  if v then
    local cur = parse(v)
    if not cur then
      return redis.error_reply('CORRUPT unreadable consent value of ' .. member)
    end
    -- Only the grant the index entry was made for lapses; record.lua keeps them in step.
    if cur.r == 0 and tonumber(cur.e) == tonumber(score) then
      -- As in record.lua: remember the newest id the trim removes.
      local gone = redis.call('XREVRANGE', KEYS[2], '(' .. minid, '-', 'COUNT', 1)
      if gone[1] then
        redis.call('SET', KEYS[3], gone[1][1])
      end
      redis.call('XADD', KEYS[2], 'MINID', '=', minid, '*', 'k', 'e', 'd', cur.json)
      published = published + 1
    end
  end
end
return { published, #due / 2 }
