-- Claims lapsed temporary grants of ONE shard and publishes one EXPIRED event for each.
-- Called by `RedisStore::claim_expired` (mod.rs) for every shard.
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

-- Base-36 milliseconds and the header of a decision body: twins in record.lua (see there).
local function b36(s)
  if string.sub(s, 1, 1) == '-' then return -tonumber(string.sub(s, 2), 36) end
  return tonumber(s, 36)
end

local function header(v, at)
  local head, r, t, e = string.match(v, '^(([012])(%-?[0-9a-z]+),(%-?[0-9a-z]*)),', at)
  if not head then return nil end
  return { r = tonumber(r), t = b36(t), e = (e ~= '' and b36(e) or nil), head = head }
end

-- The pair's current decision as { r, e, body = the decision body D }, nil if it has none,
-- false if unreadable. It is the consent key `c:`; without one (a temporary grant that expired
-- natively), the lapse record `x:`, which only ever holds a temporary grant. Same reading as
-- record.lua and RedisStore::current (mod.rs).
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

-- The newest event id that trimming `stream` to MINID `min`-0 removes, or nil. Looks at the
-- oldest entry first: with nothing older than MINID, Redis 7.0's `XREVRANGE (minid - COUNT 1`
-- walks the whole stream backwards (its seek finds no node and restarts from the end), which
-- made every XADD cost O(events retained). Twin in record.lua.
local function trimmed_by(stream, min, minid)
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if not oldest[1] or tonumber(string.match(oldest[1][1], '^(%d+)%-')) >= min then
    return nil
  end
  local gone = redis.call('XREVRANGE', stream, '(' .. minid, '-', 'COUNT', 1)
  return gone[1] and gone[1][1]
end

-- Twin of record.lua's. The id of the next event in `stream`: the microsecond it is logged at, as
-- `<ms>-<microsecond within the ms>`, so events of different shards sort in the order they
-- were logged (one Redis clock stamps every script). Never at or before the stream's newest id
-- (a clock stepped back, or two events in one microsecond): then that id's next sequence.
local function next_event_id(stream)
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  local ms = tonumber(t[1]) * 1000 + math.floor(us / 1000)
  local seq = us % 1000
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if newest[1] then
    local lms, lseq = string.match(newest[1][1], '^(%d+)%-(%d+)$')
    lms, lseq = tonumber(lms), tonumber(lseq)
    if ms < lms or (ms == lms and seq <= lseq) then
      ms, seq = lms, lseq + 1
    end
  end
  return string.format('%.0f-%.0f', ms, seq)
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
    end
  end
end
return { published, #due / 2 }
