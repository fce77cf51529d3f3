-- Prepended when the script is built (store/redis/mod.rs): lib.lua (b36, header, trimmed_by,
-- next_event_id, now_ms).
-- Claims lapsed temporary grants of ONE shard and publishes one EXPIRED event for each.
-- Called by `RedisStore::claim_expired` (store.rs) for every shard.
--
-- Exactly once across replicas: the ZREM of a due-index member inside this script IS the
-- claim. Whichever replica runs first removes it and publishes; the others no longer see it.
-- The claim publishes only if the pair's current decision (c:, else the lapse record x:) is
-- still the temporary grant with the expiry the index entry was made for. It deletes nothing
-- else: the lapse record stays, so a check keeps answering EXPIRED with the grant's evidence.
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

-- The pair's current decision as { r, e, body = the decision body D }, nil if it has none,
-- false if unreadable. It is the consent key `c:`; without one (a temporary grant that expired
-- natively), the lapse record `x:`, which only ever holds a temporary grant. Same reading as
-- record.lua and RedisStore::current (store.rs).
local function current(prefix, member)
  local c = redis.call('GET', prefix .. 'c:' .. member)
  local lapse = not c
  if lapse then
    c = redis.call('GET', prefix .. 'x:' .. member)
    if not c then return nil end
  end
  local h = #c > 16 and header(c, 17)
  if not h or (lapse and h.r ~= 0) then return false end
  h.body = string.sub(c, 17)
  return h
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local min = now_ms() - tonumber(ARGV[4])
if min < 0 then min = 0 end
local minid = string.format('%.0f', min) .. '-0'

local published = 0
for i = 1, #due, 2 do
  local member, score = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], member)
  local cur = current(ARGV[3], member)
  if cur == false then
    -- Never the member: it names the pair (phone numbers).
    return redis.error_reply('CORRUPT unreadable current decision of a lapsed grant')
  end
  if cur then
    -- Only the grant the index entry was made for lapses; record.lua keeps them in step.
    if cur.r == 0 and cur.e == tonumber(score) then
      -- As in record.lua: remember the newest id the trim removes.
      local gone = trimmed_by(KEYS[2], min, minid)
      if gone then
        redis.call('SET', KEYS[3], gone)
      end
      redis.call('XADD', KEYS[2], 'MINID', '=', minid, next_event_id(KEYS[2]), 'k', 'e', 'd',
        member .. ':' .. cur.body)
      published = published + 1
      -- issue 13 (calling lists): the lapsed grant leaves its business's calling-list
      -- index `l:<business>` (same shard, same slot), member = the customer's digits.
      local business, customer = string.match(member, '^(%d+):(%d+)$')
      if business then
        redis.call('ZREM', ARGV[3] .. 'l:' .. business, customer)
      end
      -- end issue 13 (calling lists)
    end
  end
end
return { published, #due / 2 }
