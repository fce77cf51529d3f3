-- Layout v2 (docs/redis-layout-v2.md), issue 13: registers ONE consent request for ONE pair,
-- atomically, the twin of requests.lua: purge, retry check, budget, store (requests_lib.lua),
-- then the late attribution of the replies recorded before it, which `layout_v2.rs` found by
-- reading the pair's history (the script checks that the history has not grown since, else
-- nothing is written and Rust reads again). lib.lua, v2_lib.lua and requests_lib.lua are put in
-- front of this source. No shebang: it follows pointers; every key is in the pair's slot.
--
-- An entry cannot grow in its segment, so an attributed reply is **moved**: copied with the
-- registration's trailer to the open segment, and every pointer to it is changed: the next
-- entry's back pointer, the hot record, both time indexes and the dedup hash. (The chain hash
-- does not cover the attribution; the old copy stays, unreferenced, as in an append-only log.)
--
-- KEYS[1] requests     {p:sNN}:r:<pair>  HASH request message id -> "<sent at>,<trailer>"
-- KEYS[2] request log  {p:sNN}:q:<pair>  ZSET request message id, score = sent at (ms)
-- ARGV[1] request message id; ARGV[2] the registration "<sent at b36>,<trailer>"
-- ARGV[3] sent at (ms); ARGV[4] now (ms, the app's clock); ARGV[5] retention (ms)
-- ARGV[6] the budget "<max>:<window ms>;..."; ARGV[7] event retention (ms)
-- ARGV[8] shard prefix; ARGV[9] the pair's hot-record bucket number; ARGV[10] its field
-- ARGV[11] the history length Rust read; ARGV[12] the business's digits
-- ARGV[13..] per reply to attribute, three: its position, its dedup tag (4 bytes), and its
--          event body "<business>:<customer>:<v1 decision body>" without the trailer
-- Returns as requests.lua: { 0, attributed, announced }, { 1 }, { 2 }, { 3, sent at, ... },
-- { 4 } (the history grew: read again).
local P = ARGV[8]
local now = tonumber(ARGV[4])
local refused = registration_checks(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), now,
  tonumber(ARGV[5]), ARGV[6])
if refused then return refused end

local bucket, field, business = P .. 'p:' .. ARGV[9], ARGV[10], ARGV[12]
local hot, cur = read_hot(bucket, field)
local count = cur and cur.n or 0
if count ~= tonumber(ARGV[11]) then return { 4 } end

store_registration(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), now,
  tonumber(ARGV[5]))
if #ARGV < 13 then return { 0, 0, 0 } end

-- Where each entry of the pair is, by position (a walk back from the newest).
local ptrs = {}
local p = cur.newest
for pos = count - 1, 0, -1 do
  ptrs[pos] = p
  if pos > 0 then
    local head = entry_head(P, p, 44)
    if #head < 44 or not has_bit(string.byte(head, 1), 6) then
      return redis.error_reply('CORRUPT history shorter than its count')
    end
    p = string.sub(head, 40, 44)
  end
end

-- Changes the index record (time key `key`, pointer `old`) of time index `name` to `new`. An
-- equal key may straddle a split, so every chunk that may hold it is searched.
local function index_move(name, dirname, key, old, new)
  local rec = bytes(key, 6) .. old
  local ids = redis.call('ZREVRANGEBYSCORE', P .. dirname .. ':' .. business,
    dec(key), '-inf')
  for _, id in ipairs(ids) do
    local ck = P .. name .. ':' .. business .. ':' .. id
    local chunk = redis.call('GET', ck) or ''
    local at = string.find(chunk, rec, 1, true)
    while at and (at - 1) % 11 ~= 0 do at = string.find(chunk, rec, at + 1, true) end
    if at then
      redis.call('SETRANGE', ck, dec(at - 1), bytes(key, 6) .. new)
      return
    end
  end
  error({ err = 'CORRUPT an entry missing from its time index' })
end

local trailer = string.sub(ARGV[2], string.find(ARGV[2], ',', 1, true) + 1)
local M = P .. 'm'
local attributed, announced = 0, 0
local ms, us = clock()
for i = 13, #ARGV, 3 do
  local pos = tonumber(ARGV[i])
  local old = ptrs[pos]
  local entry = old and entry_at(P, old)
  if not entry or string.sub(entry, 4, 7) ~= ARGV[i + 1] then
    return redis.error_reply('CORRUPT history entry moved')
  end
  -- The copy, with the trailer, in the open segment.
  local moved = string.sub(entry, 1, 1) .. bytes(#entry + #trailer, 2) .. string.sub(entry, 4)
    .. trailer
  if #moved > SEGMENT then return redis.error_reply('ERR history entry too long') end
  local gn = redis.call('HGET', M, 'g')
  local seg, off = 0, 0
  if gn then seg, off = u(gn, 1, 3), u(gn, 4, 2) end
  if not gn or off + #moved > SEGMENT then
    if gn then seg = seg + 1 end
    off = 0
    redis.call('SETRANGE', P .. 'g:' .. dec(seg), dec(SEGMENT - 1), '\0')
  end
  local new = bytes(seg, 3) .. bytes(off, 2)
  redis.call('SETRANGE', P .. 'g:' .. dec(seg), dec(off), moved)
  redis.call('HSET', M, 'g', bytes(seg, 3) .. bytes(off + #moved, 2))
  ptrs[pos] = new
  -- The next entry's back pointer (bytes 40-44 of it).
  local after = ptrs[pos + 1]
  if after then redis.call('SETRANGE', segment(P, after), dec(u(after, 4, 2) + 39), new) end
  -- The time indexes: its decided time, and its received time (decided + the arrival lag).
  local f = string.byte(entry, 1)
  local at = 40 + (has_bit(f, 6) and 5 or 0) + 7
  local decided = time48(entry, at)
  at = at + 6 + (f % 4 == 0 and 6 or 0)
  local zigzag, scale = 0, 1
  repeat
    local b = string.byte(entry, at)
    zigzag, scale, at = zigzag + (b % 128) * scale, scale * 128, at + 1
  until b < 128
  local lag = (zigzag % 2 == 0) and zigzag / 2 or -(zigzag + 1) / 2
  index_move('bri', 'xr', time_key(decided + lag), old, new)
  index_move('bei', 'xe', time_key(decided), old, new)
  -- The dedup hash of a long history.
  if count > WALK then
    local d = P .. 'd:' .. field
    local list = redis.call('HGET', d, ARGV[i + 1]) or ''
    for k = 1, #list, 5 do
      if string.sub(list, k, k + 4) == old then
        redis.call('HSET', d, ARGV[i + 1], string.sub(list, 1, k - 1) .. new .. string.sub(list, k + 5))
      end
    end
  end
  -- The hot record's pointers.
  local cur_at = cur.head_end - 4
  local is_current = cur.ptr == old
  if is_current then cur.ptr = new end
  if cur.newest == old then cur.newest = new end
  hot = string.sub(hot, 1, cur_at - 1) .. cur.ptr
    .. (has_bit(string.byte(hot, 1), 3) and cur.newest or '') .. string.sub(hot, cur.head_end
      + (has_bit(string.byte(hot, 1), 3) and 6 or 1))
  redis.call('HSET', bucket, field, hot)
  attributed = attributed + 1
  -- The twin of `domain::attribution::late_attribution`: announce a current decision that is a
  -- denial, a permanent grant or a temporary grant still live.
  if is_current and (cur.r ~= 0 or cur.e > ms) then
    log_event(P, ms, us, tonumber(ARGV[7]), cur.r == 2 and 'D' or 'G', ARGV[i + 2] .. trailer)
    announced = announced + 1
  end
end
return { 0, attributed, announced }
