-- Layout v2 (docs/redis-layout-v2.md): claims lapsed temporary grants of ONE shard and
-- publishes one EXPIRED event for each; the twin of claim_expired.lua. lib.lua and
-- v2_lib.lua are put in front of this source. Called by `layout_v2.rs` for every shard.
--
-- Exactly once across replicas: the ZREM of a due-index member inside this script IS the
-- claim. It publishes only if the pair's current decision is still the temporary grant with
-- the expiry the index entry was made for. The event names the grant's entry (kind "x", the
-- pair's field then the entry's pointer): readers decode the entry, which never changes.
-- The lapsed grant leaves its business's calling list.
--
-- KEYS[1] due index    {p:sNN}:due  (score = expiry ms, member = the pair's field)
-- KEYS[2] event stream {p:sNN}:e
-- KEYS[3] trimmed mark {p:sNN}:trimmed
-- ARGV[1] now (ms): claim grants with expiry <= now
-- ARGV[2] at most this many members per call
-- ARGV[3] the shard's key prefix
-- ARGV[4] event retention (ms)
-- ARGV[5] the number of shards; ARGV[6] of hot-record buckets per shard
-- Returns { events published, members claimed }.
local P = ARGV[3]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local now, now_us = clock()

local published = 0
for i = 1, #due, 2 do
  local member, score = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], member)
  if #member ~= 14 then return redis.error_reply('CORRUPT due-index member') end
  local field = member
  local bucket = hot_bucket(field, tonumber(ARGV[5]), tonumber(ARGV[6]))
  local hot = redis.call('HGET', P .. 'p:' .. bucket, field)
  local cur
  if hot then
    cur = parse_hot(hot)
    if not cur then
      return redis.error_reply('CORRUPT unreadable hot record of a lapsed grant')
    end
  end
  if cur and cur.r == 0 and cur.e == tonumber(score) then
    log_event(P, now, now_us, tonumber(ARGV[4]), 'x', field .. cur.ptr)
    published = published + 1
    local business = string.format('%.0f', u(field, 1, 7))
    sorted_edit(P, business, 'li', P .. 'xl:' .. business, 7, 7, string.sub(field, 8, 14),
      u(field, 8, 7), false)
  end
end
return { published, #due / 2 }
