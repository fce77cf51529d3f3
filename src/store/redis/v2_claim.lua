-- Layout v2 (docs/redis-layout-v2.md): claims lapsed temporary grants of ONE shard and
-- publishes one EXPIRED event for each; the twin of claim_expired.lua. lib.lua and
-- v2_lib.lua are put in front of this source. Called by `layout_v2.rs` for every shard.
--
-- Exactly once across replicas: taking a record off the due index inside this script IS the
-- claim. It publishes only if the pair's current decision is still the temporary grant with
-- the expiry the index entry was made for. The event names the grant's entry (kind "x", the
-- pair's field then the entry's pointer): readers decode the entry, which never changes.
-- The lapsed grant leaves its business's calling list.
--
-- KEYS[1] the due index's directory {p:sNN}:xd (v2_lib.lua's due_edit)
-- KEYS[2] event stream {p:sNN}:e
-- KEYS[3] trimmed mark {p:sNN}:trimmed
-- ARGV[1] now (ms): claim grants with expiry <= now
-- ARGV[2] at most this many members per call
-- ARGV[3] the shard's key prefix
-- ARGV[4] event retention (ms)
-- ARGV[5] the number of shards; ARGV[6] of hot-record buckets per shard
-- Returns { events published, members claimed }.
local P = ARGV[3]
local now, now_us = clock()
local limit, due_key = tonumber(ARGV[2]), time_key(tonumber(ARGV[1]))

-- Takes the due records (expiry <= now) from the front of the due index, at most `limit`.
local due = {}
while #due < limit do
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if not first[1] or tonumber(first[2]) > due_key then break end
  local ck = P .. 'dq::' .. first[1]
  local chunk = redis.call('GET', ck) or ''
  local k = 0
  while #due < limit and k * 20 + 20 <= #chunk and u(chunk, k * 20 + 1, 6) <= due_key do
    table.insert(due, string.sub(chunk, k * 20 + 1, k * 20 + 20))
    k = k + 1
  end
  if k == 0 then return redis.error_reply('CORRUPT due-index chunk out of order') end
  chunk = string.sub(chunk, k * 20 + 1)
  if chunk == '' then
    redis.call('DEL', ck)
    redis.call('ZREM', KEYS[1], first[1])
  else
    redis.call('SET', ck, chunk)
    redis.call('ZADD', KEYS[1], dec(u(chunk, 1, 6)), first[1])
  end
end

local published = 0
for _, rec in ipairs(due) do
  local field = string.sub(rec, 7, 20)
  local score = u(rec, 1, 6) - 140737488355328
  local bucket = hot_bucket(field, tonumber(ARGV[5]), tonumber(ARGV[6]))
  local _, cur = read_hot(P .. 'p:' .. bucket, field)
  if cur and cur.r == 0 and cur.e == score then
    log_event(P, now, now_us, tonumber(ARGV[4]), 'x', field .. cur.ptr)
    published = published + 1
    local business = dec(u(field, 1, 7))
    sorted_edit(P, business, 'li', P .. 'xl:' .. business, 7, 7, string.sub(field, 8, 14),
      u(field, 8, 7), false)
  end
end
return { published, #due }
