-- Helpers shared by the layout v2 scripts (v2_record.lua, v2_read.lua, v2_claim.lua): ONE
-- copy, put in front of each script's source when it is built (store/redis/mod.rs). Formats:
-- codec/packed.rs and docs/redis-layout-v2.md. Only `local` functions, nothing that touches
-- KEYS or ARGV.

local SEGMENT = 16368
local CHUNK = 1008
-- Entries of a pair a dedup walk reads. A longer history keeps a dedup hash `d:<field>`
-- (dedup tag -> pointers of the entries with that tag), filled when its WALK+1-th entry is
-- written (v2_record.lua), so recording never reads more than WALK entries.
local WALK = 32

-- Big-endian unsigned numbers of n bytes (Redis's bundled `struct` library, in C). The
-- formats are made once: building '>I' .. n on each call formats n as a float.
local UINT = { '>I1', '>I2', '>I3', '>I4', '>I5', '>I6', '>I7', '>I8' }
local function u(s, at, n) return (struct.unpack(UINT[n], s, at)) end
local function bytes(v, n) return struct.pack(UINT[n], v) end
-- A whole number as decimal text, for key names and command arguments. A Lua number
-- concatenated (`%.14g`) or passed to redis.call (`%.17g` in Redis 7.0) is formatted as a
-- float, which costs over twice as much as `%d` (exact: Redis's Lua formats it as a 64-bit
-- long).
local function dec(v) return string.format('%d', v) end
-- A signed 48-bit time (codec::packed's put_time: two's complement).
local function time48(s, at)
  local v = u(s, at, 6)
  if v >= 140737488355328 then v = v - 281474976710656 end
  return v
end
-- A time a sender stated: signed 64-bit (exact in a Lua number below 2^53).
local function time64(s, at) return (struct.unpack('>i8', s, at)) end
local function time_bytes(v)
  if v < 0 then v = v + 281474976710656 end
  return bytes(v, 6)
end
-- 32-bit FNV-1a of a string, exact in Lua numbers (keys::fnv1a): h * 16777619 mod 2^32 is
-- (h mod 2^8) * 2^24 + h * 403 mod 2^32, and `bit.bxor` answers a signed 32-bit number.
local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, string.byte(s, i)) % 4294967296
    h = ((h % 256) * 16777216 + h * 403) % 4294967296
  end
  return h
end
-- The hot-record bucket of a pair's field (keys::hot_bucket).
local function hot_bucket(field, shards, buckets)
  return math.floor(fnv1a(field) / shards) % buckets
end
local function has_bit(v, n) return math.floor(v / 2 ^ n) % 2 == 1 end
-- An unsigned varint (7 bits a byte, low first), as codec::packed writes it.
local function varint(v)
  local out = ''
  while v >= 128 do
    out = out .. string.char(128 + v % 128)
    v = math.floor(v / 128)
  end
  return out .. string.char(v)
end

-- The segment key of an entry pointer (3 bytes segment number, 2 bytes offset).
local function segment(P, ptr) return P .. 'g:' .. dec(u(ptr, 1, 3)) end
-- The first n bytes of the entry a pointer names.
local function entry_head(P, ptr, n)
  local off = u(ptr, 4, 2)
  return redis.call('GETRANGE', segment(P, ptr), dec(off), dec(off + n - 1))
end
-- The whole entry a pointer names (its length is in bytes 2-3), nil if there is none.
local function entry_at(P, ptr)
  local head = entry_head(P, ptr, 3)
  if #head < 3 then return nil end
  local off = u(ptr, 4, 2)
  return redis.call('GETRANGE', segment(P, ptr), dec(off), dec(off + u(head, 2, 2) - 1))
end

-- A hot record: { r rank, t decided, e expiry (temporary grants), id dedup id, ptr the
-- current entry, newest the newest entry, n the history length, head_end the last byte of
-- the current pointer }, or false if it is unreadable.
local function parse_hot(hot)
  local f = string.byte(hot, 1)
  if not f or #hot < 29 then return false end
  local cur = { r = f % 4, t = time48(hot, 2) }
  local at = 8
  if has_bit(f, 2) then
    cur.e = time48(hot, 8)
    at = 14
  end
  cur.id = string.sub(hot, at, at + 15)
  cur.ptr = string.sub(hot, at + 16, at + 20)
  cur.newest = cur.ptr
  cur.head_end = at + 20
  at = at + 21
  if has_bit(f, 3) then
    cur.newest = string.sub(hot, at, at + 4)
    at = at + 5
  end
  cur.n = 0
  local scale = 1
  repeat
    local b = string.byte(hot, at)
    if not b then return false end
    cur.n = cur.n + (b % 128) * scale
    scale, at = scale * 128, at + 1
  until b < 128
  if #cur.newest ~= 5 then return false end
  return cur
end

-- The hot record of `field` in the bucket hash `bucket`: the value and its parse, or nil
-- when the pair has none (HGET answers `false` then). An unreadable one ends the script with
-- a CORRUPT error: never read as "no decision".
local function read_hot(bucket, field)
  local hot = redis.call('HGET', bucket, field)
  if not hot then return nil end
  local cur = parse_hot(hot)
  if not cur then error({ err = 'CORRUPT unreadable hot record' }) end
  return hot, cur
end

local function padded_to_chunk(s) return s .. string.rep('\0', CHUNK - #s) end

-- A chunked sorted array of fixed-width records `<name>:<business>:<id>` of shard prefix P,
-- with a directory ZSET `dir` (first key -> chunk id); chunk ids are given out by the
-- business's notes hash `b:<business>`, field `n` (the due index's business is ''). Records sort by their leading `keyw` bytes, a number (`key`); an
-- insert of a record already there, or a removal of one that is not, changes nothing.
-- Returns the id of the chunk it edited and, if that chunk split, the new (right) chunk's id
-- and its newest key. Chunk `lid`, if given, is the padded last chunk: `lused` bytes, then
-- zeros to CHUNK; it is written back padded, and its new length returned last. A first chunk
-- is padded if `lid` is false. (Padded in one SET: growing a string allocates twice what it
-- needs.)
local function sorted_edit(P, business, name, dir, width, keyw, rec, key, insert, lid, lused)
  local B = P .. 'b:' .. business
  local ks = dec(key)
  local found = redis.call('ZREVRANGEBYSCORE', dir, ks, '-inf', 'LIMIT', '0', '1')[1]
  if not found then found = redis.call('ZRANGE', dir, '0', '0')[1] end
  if not found then
    if not insert then return end
    local id = redis.call('HINCRBY', B, 'n', '1')
    redis.call('SET', P .. name .. ':' .. business .. ':' .. dec(id),
      lid == false and padded_to_chunk(rec) or rec)
    redis.call('ZADD', dir, ks, id)
    return tonumber(id)
  end
  local ck = P .. name .. ':' .. business .. ':' .. found
  local chunk = redis.call('GET', ck) or ''
  local padded = lid ~= nil and tonumber(found) == lid
  if padded then chunk = string.sub(chunk, 1, lused) end
  local n = #chunk / width
  -- pos: how many records sort at or before `key` (a binary search).
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if u(chunk, mid * width + 1, keyw) <= key then lo = mid + 1 else hi = mid end
  end
  local pos = lo
  local same = false
  for i = pos, 1, -1 do
    if u(chunk, (i - 1) * width + 1, keyw) ~= key then break end
    if string.sub(chunk, (i - 1) * width + 1, i * width) == rec then
      same, pos = true, i
      break
    end
  end
  if insert then
    if same then return tonumber(found) end
    chunk = string.sub(chunk, 1, pos * width) .. rec .. string.sub(chunk, pos * width + 1)
    if pos == 0 then redis.call('ZADD', dir, ks, found) end
    local split, newest
    -- A full chunk splits where the key changes, nearest its middle, so no two chunks share
    -- a first key (the directory orders equal scores by id string, not by key). A chunk of
    -- one key only does not split: it grows.
    local half
    if #chunk > CHUNK then
      local count = #chunk / width
      local mid = math.floor(count / 2)
      for d = 0, count do
        for _, c in ipairs({ mid - d, mid + d }) do
          if not half and c >= 1 and c < count
              and u(chunk, (c - 1) * width + 1, keyw) ~= u(chunk, c * width + 1, keyw) then
            half = c * width
          end
        end
        if half then break end
      end
    end
    if half then
      split = redis.call('HINCRBY', B, 'n', '1')
      local right = string.sub(chunk, half + 1)
      redis.call('ZADD', dir, dec(u(right, 1, keyw)), split)
      newest = u(right, #right - width + 1, keyw)
      chunk = string.sub(chunk, 1, half)
      if padded then
        -- The right half is the new last chunk; the left one is exact from now on.
        redis.call('SET', P .. name .. ':' .. business .. ':' .. dec(split), padded_to_chunk(right))
        redis.call('SET', ck, chunk)
        return tonumber(found), split, newest, #right
      end
      redis.call('SET', P .. name .. ':' .. business .. ':' .. dec(split), right)
    end
    redis.call('SET', ck, padded and padded_to_chunk(chunk) or chunk)
    return tonumber(found), split, newest, #chunk
  elseif same then
    chunk = string.sub(chunk, 1, (pos - 1) * width) .. string.sub(chunk, pos * width + 1)
    if chunk == '' then
      redis.call('DEL', ck)
      redis.call('ZREM', dir, found)
    else
      redis.call('SET', ck, chunk)
    end
  end
  return tonumber(found)
end

-- Whether `entry` is the delivery `d` (the twin of `domain::rules::redelivery`): nil if it
-- is another delivery, 2 if it is this one and said the same (a duplicate), 3 if it is this
-- one and said something else (a conflict). `d` = { msg: the message id as a packed text,
-- src: "1" DoubleTick or "0", rank, stated (ms), stated_expiry (ms or nil) }: the delivery
-- is (pair, sender, message id), what it said is its fingerprint's fields.
local function same_delivery(entry, d)
  local f = string.byte(entry, 1)
  local at = 40 + (has_bit(f, 6) and 5 or 0) + 7 -- after the back pointer and the customer
  local decided = time48(entry, at)
  at = at + 6
  local expires
  if f % 4 == 0 then
    expires = time48(entry, at)
    at = at + 6
  end
  repeat
    local b = string.byte(entry, at)
    at = at + 1
  until not b or b < 128
  local stated, stated_expiry = decided, expires
  if has_bit(f, 4) then
    stated = time64(entry, at)
    at = at + 8
  end
  if has_bit(f, 5) then
    if string.byte(entry, at) == 0 then
      stated_expiry = nil
      at = at + 1
    else
      stated_expiry = time64(entry, at + 1)
      at = at + 9
    end
  end
  if string.sub(entry, at, at + #d.msg - 1) ~= d.msg then return nil end
  if (has_bit(f, 3) and '1' or '0') ~= d.src then return nil end
  if f % 4 == d.rank and stated == d.stated and stated_expiry == d.stated_expiry then
    return 2
  end
  return 3
end

-- Looks for the delivery `d` (see same_delivery; d.tag: its dedup tag) among the entries of
-- the pair whose hot record is `cur`: a walk of its newest WALK entries, or for a longer
-- history its dedup hash `dedup`. Returns nil (not seen), 2 (duplicate) or 3 (conflict).
local function find_delivery(P, dedup, cur, d)
  if cur.n > WALK then
    local ptrs = redis.call('HGET', dedup, d.tag) or ''
    for i = 1, #ptrs, 5 do
      local entry = entry_at(P, string.sub(ptrs, i, i + 4))
      local seen = entry and same_delivery(entry, d)
      if seen then return seen end
    end
    return nil
  end
  local ptr = cur.newest
  for _ = 1, WALK do
    local head = entry_head(P, ptr, 44)
    if #head < 39 then return nil end
    if string.sub(head, 4, 7) == d.tag then
      local seen = same_delivery(entry_at(P, ptr), d)
      if seen then return seen end
    end
    if not has_bit(string.byte(head, 1), 6) then return nil end
    ptr = string.sub(head, 40, 44)
  end
  return nil
end

-- Redis's clock: { ms, microsecond within the ms } from one TIME.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return tonumber(t[1]) * 1000 + math.floor(us / 1000), us % 1000
end

-- Logs an event in shard P's stream at Redis's clock `ms`/`us` (clock()) and returns its id.
-- Cheaper than lib.lua's next_event_id + trimmed_by on every call: the newest id is kept in
-- the shard's meta hash (`i`), and trimming (with its trimmed mark, as in record.lua) runs at
-- most every min(1 s, retention / 1000) (`k`: the last time it ran), so an event may outlive
-- the retention by that much. Every v2 script that logs goes through here. A caller that
-- reads and writes the meta hash itself passes `meta` = { i = HMGET's `i`, k = its `k`,
-- out = the fields it will HSET }: the event's fields are added to `out`, not written.
local function log_event(P, ms, us, retention, kind, body, meta)
  local M = P .. 'm'
  local stream = P .. 'e'
  local newest, checked, out
  if meta then
    newest, checked, out = meta.i, meta.k, meta.out
  else
    local got = redis.call('HMGET', M, 'i', 'k')
    newest, checked, out = got[1], got[2], {}
  end
  if not newest then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', '1')[1]
    newest = last and last[1]
  end
  local seq = us
  if newest then
    local lms, lseq = string.match(newest, '^(%d+)%-(%d+)$')
    lms, lseq = tonumber(lms), tonumber(lseq)
    if ms < lms or (ms == lms and seq <= lseq) then ms, seq = lms, lseq + 1 end
  end
  local id = string.format('%d-%d', ms, seq)
  table.insert(out, 'i')
  table.insert(out, id)
  local every = math.min(1000, math.floor(retention / 1000))
  if not checked or ms - tonumber(checked) >= every then
    local min = ms - retention
    if min < 0 then min = 0 end
    local minid = dec(min) .. '-0'
    local gone = trimmed_by(stream, min, minid)
    if gone then redis.call('SET', P .. 'trimmed', gone) end
    redis.call('XADD', stream, 'MINID', '=', minid, id, 'k', kind, 'd', body)
    table.insert(out, 'k')
    table.insert(out, dec(ms))
  else
    redis.call('XADD', stream, id, 'k', kind, 'd', body)
  end
  if not meta then redis.call('HSET', M, unpack(out)) end
  return id
end

-- A time as an index key: biased by 2^47 so that unsigned byte order is time order.
local function time_key(ms) return ms + 140737488355328 end

-- Adds (time `ms`, pointer `ptr`) to the business's time index `name` (a chunked sorted array
-- of 11-byte records, directory `<dirname>:<business>`). `last` is the meta hash's note of its
-- last chunk (id 3, used 2, newest key 6 bytes; false if none): when the record is the
-- newest it is appended to that padded chunk, else inserted in order. Returns the new note.
local function time_index_add(P, business, name, dirname, last, ms, ptr)
  local key = time_key(ms)
  local rec = bytes(key, 6) .. ptr
  local lid, lused, lkey
  if last then lid, lused, lkey = u(last, 1, 3), u(last, 4, 2), u(last, 6, 6) end
  if last and key >= lkey and lused + 11 <= CHUNK then
    redis.call('SETRANGE', P .. name .. ':' .. business .. ':' .. dec(lid), dec(lused), rec)
    lused, lkey = lused + 11, key
  else
    local id, split, newest, len = sorted_edit(P, business, name, P .. dirname .. ':' .. business,
      11, 6, rec, key, true, lid or false, lused)
    if not last then
      lid, lused, lkey = id, 11, key
    elseif id == lid then
      if split then lid, lkey = tonumber(split), newest end
      lused = len
    end
  end
  return bytes(lid, 3) .. bytes(lused, 2) .. bytes(lkey, 6)
end

-- The shard's due index: a chunked sorted array `dq::<id>` (directory `xd`) of 20-byte
-- records, a temporary grant's expiry (as a time_key) then its pair's field. About 5 bytes a
-- consent where a sorted set cost 23.
local function due_edit(P, expiry, field, insert)
  local key = time_key(expiry)
  sorted_edit(P, '', 'dq', P .. 'xd', 20, 6, bytes(key, 6) .. field, key, insert)
end
