-- callgate-bench redis-record-prototype: what recording ONE decision costs Redis in the
-- packed layout of docs/redis-layout-v2.md, as first designed. A measuring prototype,
-- superseded by the store on layout v2 (src/store/redis/v2_record.lua), kept for the figures
-- taken with it. The store's lib.lua (trimmed_by, next_event_id, now_ms) and v2_lib.lua (the
-- packed helpers and chunked sorted arrays) are put in front of this source.
--
-- No shebang: like claim_expired.lua, it builds its key names from the shard prefix; every
-- key shares the shard's hash tag (one slot).
--
-- ARGV[1]  shard prefix "{callgate:sNN-k}:"
-- ARGV[2]  hot-record bucket key suffix ("p:<n>")
-- ARGV[3]  the pair as a hash field (business and customer, 7 bytes each)
-- ARGV[4]  the business's digits (index key names)
-- ARGV[5]  the customer (7 bytes)
-- ARGV[6]  the new decision's rank (0 temporary grant, 1 permanent grant, 2 denial)
-- ARGV[7]  its decided time (ms)
-- ARGV[8]  its expiry (ms; 0 if none)
-- ARGV[9]  its dedup id (16 bytes; the first 4 are the entry's dedup tag)
-- ARGV[10] the chain tip Rust hashed against (32 bytes; zeros for an empty history)
-- ARGV[11] the entry's own hash if applied; ARGV[12] if stale (32 bytes each)
-- ARGV[13] the entry as applied, without a back pointer (codec::packed::encode_entry)
-- ARGV[14] the event's body; ARGV[15] event retention (ms)
-- Returns 0 applied, 1 stale, 2 duplicate, {4, tip} tip moved.
--
-- Formats: src/store/redis/codec/packed.rs (pointer, entry, hot record); in short
--   entry        flags (bit 2 stale, bit 6 a back pointer follows the hash), length (2 B),
--                dedup tag (4 B), own hash (32 B), [back pointer (5 B)], the rest
--   hot record   flags (bits 0-1 rank, bit 2 an expiry follows, bit 3 newest != current),
--                decided (6 B), [expiry (6 B)], dedup id (16 B), current pointer,
--                [newest pointer], the history length (varint)
--   m            the shard's meta HASH, read with one HMGET and written with one HSET per
--                call: `g` the open segment's pointer (number, write offset); `r<business>`
--                the open bri chunk (number, used bytes); `e<business>` the last bei chunk
--                (id, its newest time: an event-time record at or after it is appended);
--                `n<business>` the last chunk id given out
--   bri chunks   pointers in arrival order; bei chunks: decided (6 B) + pointer, sorted;
--                li chunks: customers (7 B), sorted. Directories `xe`/`xl` (ZSET: each
--                sorted chunk's first key → its id).

-- SEGMENT, CHUNK, WALK, u, bytes, varint and sorted_edit come from the store's v2_lib.lua.

local P = ARGV[1]
local bucket = P .. ARGV[2]
local field = ARGV[3]
local business = ARGV[4]

-- Big-endian unsigned numbers of n bytes (Redis's bundled `struct` library, in C).
local function entry_key(ptr) return P .. 'g:' .. u(ptr, 1, 3) end

-- The hot record, parsed.
local hot = redis.call('HGET', bucket, field)
local cur
if hot then
  local f = string.byte(hot, 1)
  local at = 8
  cur = { r = f % 4, t = u(hot, 2, 6) }
  if math.floor(f / 4) % 2 == 1 then at = at + 6 end
  cur.id = string.sub(hot, at, at + 15)
  cur.ptr = string.sub(hot, at + 16, at + 20)
  cur.newest = cur.ptr
  local tail = at + 21
  if math.floor(f / 8) % 2 == 1 then
    cur.newest = string.sub(hot, at + 21, at + 25)
    tail = at + 26
  end
  cur.e = (math.floor(f / 4) % 2 == 1) and u(hot, 8, 6) or nil
  -- The history length, a varint (7 bits a byte, low first).
  cur.n = 0
  local scale = 1
  repeat
    local b = string.byte(hot, tail)
    cur.n = cur.n + (b % 128) * scale
    scale, tail = scale * 128, tail + 1
  until b < 128
end
local count = (cur and cur.n or 0) + 1

-- The chain tip, then de-duplication: a walk of the pair's newest entries.
local tip = string.rep('\0', 32)
if cur then
  local ptr = cur.newest
  local tag = string.sub(ARGV[9], 1, 4)
  for step = 1, WALK do
    local off = u(ptr, 4, 2)
    local head = redis.call('GETRANGE', entry_key(ptr), off, off + 43)
    if step == 1 then tip = string.sub(head, 8, 39) end
    if string.sub(head, 4, 7) == tag then return 2 end
    if math.floor(string.byte(head, 1) / 64) % 2 == 0 then break end
    ptr = string.sub(head, 40, 44)
  end
end
if tip ~= ARGV[10] then return { 4, tip } end

-- Arbitrate (the ordering rule of record.lua: time, rank, dedup id).
local rank, t, e = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local applied = true
if cur then
  if t ~= cur.t then applied = t > cur.t
  elseif rank ~= cur.r then applied = rank > cur.r
  elseif ARGV[9] == cur.id then return 2
  else applied = ARGV[9] > cur.id end
end

-- Append the entry to the shard's open segment.
local M = P .. 'm'
local meta = redis.call('HMGET', M, 'g', 'r' .. business, 'e' .. business)
local gn, open, last = meta[1], meta[2], meta[3]
local seg, off = 0, 0
if gn then seg, off = u(gn, 1, 3), u(gn, 4, 2) end
local packed = ARGV[13]
local flags = string.byte(packed, 1) + (cur and 64 or 0) + (applied and 0 or 4)
local entry = string.char(flags) .. bytes(#packed + (cur and 5 or 0), 2)
  .. string.sub(packed, 4, 7) .. (applied and ARGV[11] or ARGV[12])
  .. (cur and cur.newest or '') .. string.sub(packed, 40)
if not gn or off + #entry > SEGMENT then
  if gn then seg = seg + 1 end
  off = 0
  redis.call('SETRANGE', P .. 'g:' .. seg, SEGMENT - 1, '\0')
end
local ptr = bytes(seg, 3) .. bytes(off, 2)
redis.call('SETRANGE', P .. 'g:' .. seg, off, entry)
local meta_out = { 'g', bytes(seg, 3) .. bytes(off + #entry, 2) }

-- (sorted_edit, the chunked sorted arrays, is the store's: src/store/redis/v2_lib.lua.)

-- The time indexes: arrival order (append), event time (sorted; appended when it is the
-- newest time, which it almost always is).
local rn, rused = 0, 0
if open then rn, rused = u(open, 1, 3), u(open, 4, 2) end
if not open or rused + 5 > CHUNK then
  if open then rn = rn + 1 end
  rused = 0
  redis.call('SETRANGE', P .. 'bri:' .. business .. ':' .. rn, CHUNK - 1, '\0')
end
redis.call('SETRANGE', P .. 'bri:' .. business .. ':' .. rn, rused, ptr)
table.insert(meta_out, 'r' .. business)
table.insert(meta_out, bytes(rn, 3) .. bytes(rused + 5, 2))

local xe = P .. 'xe:' .. business
local rec = bytes(t, 6) .. ptr
local lid, lused, lkey
if last then lid, lused, lkey = u(last, 1, 3), u(last, 4, 2), u(last, 6, 6) end
if last and t >= lkey and lused + 11 <= CHUNK then
  -- The common case: the newest event time, appended to the padded last chunk.
  redis.call('SETRANGE', P .. 'bei:' .. business .. ':' .. lid, lused, rec)
  lused, lkey = lused + 11, t
else
  local id, split, newest, len = sorted_edit(P, business, 'bei', xe, 11, 6, rec, t, true, lid or false, lused)
  if not last then
    lid, lused, lkey = id, 11, t
  elseif id == lid then
    if split then lid, lkey = tonumber(split), newest end
    lused = len
  end
end
table.insert(meta_out, 'e' .. business)
table.insert(meta_out, bytes(lid, 3) .. bytes(lused, 2) .. bytes(lkey, 6))
redis.call('HSET', M, unpack(meta_out))

if not applied then
  -- The newest entry moved; the current decision did not.
  local f = string.byte(hot, 1)
  local fixed = 1 + 6 + (cur.e and 6 or 0) + 16 + 5
  if math.floor(f / 8) % 2 == 0 then f = f + 8 end
  redis.call('HSET', bucket, field, string.char(f) .. string.sub(hot, 2, fixed) .. ptr
    .. varint(count))
  return 1
end

-- The hot record, the lease (native expiry), the due index, the calling list.
local hf = rank + (e > 0 and 4 or 0)
redis.call('HSET', bucket, field, string.char(hf) .. bytes(t, 6) .. (e > 0 and bytes(e, 6) or '')
  .. ARGV[9] .. ptr .. varint(count))
local lease = P .. 't:' .. field
if rank == 0 then
  redis.call('SET', lease, '1', 'PXAT', string.format('%.0f', e))
  redis.call('ZADD', P .. 'due', string.format('%.0f', e), field)
else
  if cur and cur.r == 0 then
    redis.call('DEL', lease)
    redis.call('ZREM', P .. 'due', field)
  end
end
-- A denial for a pair with no decision or a denial is not listed: nothing to remove. (A
-- grant's listing may have been removed by the expiry sweep, so a grant is always inserted.)
if rank ~= 2 or (cur and cur.r ~= 2) then
  sorted_edit(P, business, 'li', P .. 'xl:' .. business, 7, 7, ARGV[5], u(ARGV[5], 1, 7),
    rank ~= 2)
end

-- The event, as record.lua logs it.
local now = now_ms()
local min = now - tonumber(ARGV[15])
if min < 0 then min = 0 end
local minid = string.format('%.0f', min) .. '-0'
local gone = trimmed_by(P .. 'e', min, minid)
if gone then redis.call('SET', P .. 'trimmed', gone) end
redis.call('XADD', P .. 'e', 'MINID', '=', minid, next_event_id(P .. 'e'), 'k',
  rank == 2 and 'd' or 'g', 'd', ARGV[14])
return 0
