-- Prepended when the script is built (store/redis/mod.rs): the `#!lua` line (a script with
-- flags: every key it touches is declared in KEYS), then lib.lua (b36, header, trimmed_by,
-- next_event_id, now_ms).
-- Records ONE decision for ONE pair, atomically: de-duplicate, arbitrate, append to the
-- history, update the current decision and the due index, and publish the event.
-- Called by `RedisStore::record` (store.rs); the formats are described in codec.rs.
-- All keys are declared and share the pair's shard hash tag (one cluster slot).
--
-- KEYS[1] consent      {p:sNN}:c:<pair>  "<dedup id><D>": the whole current decision;
--                                        PEXPIREAT at a temporary grant's expiry
-- KEYS[2] lapse        {p:sNN}:x:<pair>  the same value while the current decision is a
--                                        temporary grant, no TTL (answers EXPIRED once c: is
--                                        gone); absent otherwise
-- KEYS[3] history      {p:sNN}:h:<pair>  every kept decision "<a|s><dedup id><received>,<D>"
-- KEYS[4] event stream {p:sNN}:e
-- KEYS[5] due index    {p:sNN}:due
-- KEYS[6] trimmed mark {p:sNN}:trimmed  newest event id trimmed from the stream
-- KEYS[7] dedup        {p:sNN}:d:<pair>  HASH dedup id -> fingerprint of every kept decision
-- ARGV[1] the decision body D "<rank><decided>,<expires>,<evidence...>" (times in base 36)
-- ARGV[2] the decision's dedup id (16 raw bytes)
-- ARGV[3] received at (base 36 ms)
-- ARGV[4] event kind to publish if applied ("g", "d", "e" for a temporary grant already lapsed
--         on arrival (issue 16: announced now, not by the sweep), or "" for none)
-- ARGV[5] event retention (ms)
-- ARGV[6] the pair as due-index member "<business>:<customer>"
-- ARGV[7] the decision's fingerprint (8 raw bytes: what the sender said)
-- -- issue 14: the hash chain and the records index --
-- KEYS[8] records index by received time {p:sNN}:br:<business>  (ZSET, lex)
-- KEYS[9] records index by event time    {p:sNN}:be:<business>  (ZSET, lex)
-- ARGV[8]  the history length Rust expects (the new entry's position), decimal
-- ARGV[9]  the hash Rust expects at the history's tip (32 raw bytes; zeros if the history is
--          empty or its last entry is pre-chain)
-- ARGV[10] the chain part of the entry if it is applied: "<position b36>,<prev><hash>"
-- ARGV[11] the same if it is stale (the hash covers the outcome)
-- ARGV[12] the entry's member in KEYS[8]; ARGV[13] in KEYS[9]
-- SHA-256 is computed in Rust (Lua has none); the tip it was computed against is checked here,
-- atomically. If the history moved meanwhile (another replica recorded for this pair), nothing
-- is written and the script answers {4, length, tip}: the history's length and tip hash as
-- they are, which Rust chains its next try to.
-- -- end issue 14 --
-- -- issue 13 (attribution):
-- KEYS[10] requests    {p:sNN}:r:<pair>  HASH request message id -> registration
-- ARGV[14] the reply's paired message id ('' if none)
-- issue 13 (calling lists):
-- KEYS[11] calling-list index {p:sNN}:l:<business>  ZSET of the business's customers (in
--                                        this shard) whose current decision is a grant
-- ARGV[15] the customer's digits (the index member)
-- Returns 0 applied (no event logged), the event's id "<ms>-<seq>" applied with an event
-- (issue 16), 1 stale, 2 duplicate, 3 conflict (same id, another fingerprint: nothing
-- is written), {4, length, tip} chain tip moved (nothing is written; the tip as it is).

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
--   3. on a tie, the larger dedup id (byte order; the raw bytes order as their hex does);
--   4. all equal: the same decision (a duplicate).
-- decided_at values are integers below 2^53, so Lua numbers hold them exactly.
-- =====================================================================================
local function precedence(a, b)
  if a.t ~= b.t then return a.t > b.t and 1 or -1 end
  if a.r ~= b.r then return a.r > b.r and 1 or -1 end
  return cmp_bytes(a.id, b.id)
end

local new = header(ARGV[1], 1)
if not new or #ARGV[2] ~= 16 then
  return redis.error_reply('CORRUPT new decision has no header')
end
new.id = ARGV[2]

-- issue 14: the chain tip must be the one Rust hashed against (see the header). If it is
-- not, the answer carries the tip as it is, so Rust's next try needs no read of its own.
-- Checked first: a wrong guess (issue 16: the tip is guessed, not read) costs two reads, and
-- the try chained to the real tip does everything below (a duplicate, a conflict included).
local len = redis.call('LLEN', KEYS[3])
local tip = string.rep('\0', 32)
if len > 0 then
  local last = redis.call('LINDEX', KEYS[3], -1)
  local kind = string.sub(last, 1, 1)
  if kind == 'A' or kind == 'S' then
    local comma = string.find(last, ',', 18, true)
    if comma and #last >= comma + 64 then
      tip = string.sub(last, comma + 33, comma + 64)
    end
  end
end
if len ~= tonumber(ARGV[8]) or tip ~= ARGV[9] then return { 4, len, tip } end

-- De-duplication by delivery (pair, sender, message id), the twin of
-- `domain::rules::redelivery`: one HGET, whatever the length of the history.
if #ARGV[7] ~= 8 then
  return redis.error_reply('CORRUPT new decision has no fingerprint')
end
local seen = redis.call('HGET', KEYS[7], new.id)
if seen then
  if seen == ARGV[7] then return 2 end
  return 3
end

-- -- issue 13 (attribution) ------------------------------------------------------------
-- A reply to a registered request carries the registration's trailer (attribution, and its
-- customer name) at the end of its body. One with no registration yet is recorded as it is;
-- requests.lua attributes it when the registration lands.
local body = ARGV[1]
if ARGV[14] ~= '' then
  local reg = redis.call('HGET', KEYS[10], ARGV[14])
  if reg then
    local comma = string.find(reg, ',', 1, true)
    if not comma then
      return redis.error_reply('CORRUPT unreadable consent request')
    end
    body = body .. string.sub(reg, comma + 1)
  end
end
-- -- end issue 13 ------------------------------------------------------------------------

-- The current decision: the consent key; without one (none yet, or a temporary grant that
-- lapsed and expired natively), the lapse record, which only ever holds a temporary grant.
-- Same reading as RedisStore::current (store.rs) and claim_expired.lua.
local current
local c = redis.call('GET', KEYS[1])
local from = KEYS[1]
if not c then
  c = redis.call('GET', KEYS[2])
  from = KEYS[2]
end
if c then
  current = #c > 16 and header(c, 17)
  if not current or (from == KEYS[2] and current.r ~= 0) then
    -- The key's kind, never its name: key names carry the pair's phone numbers.
    return redis.error_reply('CORRUPT unreadable consent value (' .. (from == KEYS[2] and 'lapse record' or 'current decision') .. ')')
  end
  current.id = string.sub(c, 1, 16)
end

local applied = true
if current then
  local p = precedence(new, current)
  if p == 0 then
    return 2
  end
  applied = p > 0
end

-- issue 14: the chain tip was checked first (above).
redis.call('ZADD', KEYS[8], 0, ARGV[12])
redis.call('ZADD', KEYS[9], 0, ARGV[13])
-- end issue 14

redis.call('HSET', KEYS[7], new.id, ARGV[7])
if not applied then
  redis.call('RPUSH', KEYS[3], 'S' .. new.id .. ARGV[11] .. ARGV[3] .. ',' .. body) -- issue 14: chained
  return 1
end
redis.call('RPUSH', KEYS[3], 'A' .. new.id .. ARGV[10] .. ARGV[3] .. ',' .. body) -- issue 14: chained
local value = new.id .. body

local now = now_ms()
if new.r == 0 then
  -- Temporary grant: the consent key expires natively at the grant's own expiry; the lapse
  -- record stays, so a check after it answers EXPIRED (with the grant's evidence), not
  -- NO_CONSENT. A grant already expired on arrival gets the lapse record only.
  if new.e > now then
    redis.call('SET', KEYS[1], value, 'PXAT', string.format('%.0f', new.e))
  else
    redis.call('DEL', KEYS[1])
  end
  redis.call('SET', KEYS[2], value)
  if ARGV[4] == 'e' then
    -- issue 16: lapsed on arrival (by the caller's clock): its EXPIRED is published below,
    -- now, so it is not due for the sweep.
    redis.call('ZREM', KEYS[5], ARGV[6])
  else
    redis.call('ZADD', KEYS[5], new.e, ARGV[6])
  end
else
  redis.call('SET', KEYS[1], value)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[5], ARGV[6])
end

-- issue 13 (calling lists): the index follows the current decision. A grant (even one that
-- lapses later: the sweep's claim removes it, and readers filter by their clock) is listed,
-- a denial is not, nor (issue 16) a grant already lapsed on arrival (announced EXPIRED now).
if new.r == 2 or ARGV[4] == 'e' then
  redis.call('ZREM', KEYS[11], ARGV[15])
else
  redis.call('ZADD', KEYS[11], 0, ARGV[15])
end
-- end issue 13 (calling lists)

if ARGV[4] ~= '' then
  local min = now - tonumber(ARGV[5])
  if min < 0 then min = 0 end
  local minid = string.format('%.0f', min) .. '-0'
  -- Redis 7.0 does not record trimmed ids (max-deleted-entry-id only follows XDEL), so keep
  -- the newest id this XADD is about to trim: read_events reports cursors before it.
  local gone = trimmed_by(KEYS[4], min, minid)
  if gone then
    redis.call('SET', KEYS[6], gone)
  end
  -- issue 16: an applied decision that logged an event answers with the event's id (the
  -- webhook's read-your-writes token is built from it).
  local id = next_event_id(KEYS[4])
  redis.call('XADD', KEYS[4], 'MINID', '=', minid, id, 'k', ARGV[4], 'd',
    ARGV[6] .. ':' .. body)
  return id
end
return 0
