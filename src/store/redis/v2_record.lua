-- Layout v2 (docs/redis-layout-v2.md): records ONE decision for ONE pair, atomically:
-- de-duplicate, arbitrate, append the entry to the shard's history segment, update the hot
-- record, the lease (native expiry), the due index, the time indexes, the calling list, and
-- publish the event. Called by `layout_v2.rs`; the formats are in codec/packed.rs.
-- lib.lua (trimmed_by, next_event_id, now_ms) and v2_lib.lua are put in front of this source.
--
-- No shebang: like claim_expired.lua, it builds key names from the shard prefix (segments and
-- index chunks are only known once read); every key shares the shard's hash tag (one slot).
--
-- KEYS[1]  the pair's hot-record bucket {prefix:sNN-k}:p:<n>
-- ARGV[1]  shard prefix "{prefix:sNN-k}:"
-- ARGV[2]  the pair as a hash field (business and customer, 7 bytes each)
-- ARGV[3]  the business's digits (index key names)
-- ARGV[4]  the customer (7 bytes)
-- ARGV[5]  the new decision's rank (0 temporary grant, 1 permanent grant, 2 denial)
-- ARGV[6]  its decided time (ms)
-- ARGV[7]  its expiry (ms; ignored unless a temporary grant)
-- ARGV[8]  its dedup id (16 bytes; the first 4 are the entry's dedup tag)
-- ARGV[9]  the history length Rust chained to (decimal)
-- ARGV[10] the chain tip Rust chained to (32 bytes; zeros for an empty history)
-- ARGV[11] the entry's own hash if applied; ARGV[12] if stale (32 bytes each)
-- ARGV[13] the entry as applied, without a back pointer (codec::packed::encode_entry)
-- ARGV[14] the event's body "<business>:<customer>:<v1 decision body>"
-- ARGV[15] event retention (ms)
-- ARGV[16] event kind if applied: "g", "d", "e" (a temporary grant lapsed on arrival), or ""
-- ARGV[17] the delivery's message id as a packed text (codec::packed::put_text)
-- ARGV[18] what the sender said: stated time (ms)
-- ARGV[19] ... stated expiry (ms), or "" for none
-- ARGV[20] the reply's paired message id ("" if none)
-- ARGV[21] the pair's registrations hash (v1's `r:` key, full name)
-- ARGV[22] the delivery's sender: "1" DoubleTick, "0" WhatsApp (entry flag bit 3)
-- ARGV[23] received at (ms, the app's clock)
-- Returns 0 applied (no event), the event id (applied, event logged), 1 stale, 2 duplicate,
-- 3 conflict (the same delivery said something else: nothing is written), {4, length, tip}
-- the chain tip moved (nothing is written; the tip as it is).
--
-- The hot record (a field of the bucket hash): flags (bits 0-1 rank, bit 2 an expiry follows,
-- bit 3 newest != current), decided (6 B), [expiry (6 B)], the current decision's dedup id
-- (16 B), its entry's pointer, [the newest entry's pointer], the history length (varint).
-- The shard's meta hash `m`, read with one HMGET and written with one HSET: `g` the open
-- segment (number, write offset), `i` the newest event id and `k` the last trim check
-- (v2_lib.lua's log_event). The business's notes hash `b:<business>`, read with one HMGET
-- and written with one HSET: `r` and `e` the last bri and bei chunk (id, used bytes, its
-- newest time); its `n`, the last chunk id given out, is v2_lib.lua's sorted_edit's. (Kept
-- apart so the shard's hash stays three fields however many businesses it holds.)


local P = ARGV[1]
local bucket = KEYS[1]
local field = ARGV[2]
local business = ARGV[3]

-- The hot record.
local hot, cur = read_hot(bucket, field)

-- The chain tip first (as record.lua): a wrong guess is answered before anything else.
local count = cur and cur.n or 0
local tip = string.rep('\0', 32)
local newest_head
if cur then
  local off = u(cur.newest, 4, 2)
  newest_head = redis.call('GETRANGE', segment(P, cur.newest), dec(off), dec(off + 43))
  if #newest_head < 44 then return redis.error_reply('CORRUPT unreadable history entry') end
  tip = string.sub(newest_head, 8, 39)
end
if count ~= tonumber(ARGV[9]) or tip ~= ARGV[10] then return { 4, count, tip } end

-- De-duplication by delivery (v2_lib.lua's find_delivery).
local rank, t, e = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local tag = string.sub(ARGV[8], 1, 4)
local dedup = P .. 'd:' .. field
if cur then
  local seen = find_delivery(P, dedup, cur, {
    tag = tag, msg = ARGV[17], src = ARGV[22], rank = rank, stated = tonumber(ARGV[18]),
    stated_expiry = ARGV[19] ~= '' and tonumber(ARGV[19]) or nil,
  })
  if seen then return seen end
end

-- Arbitrate: THE ORDERING RULE, the twin of `domain::rules::precedence` and record.lua's
-- (later decided time, then higher rank, then larger dedup id; all equal: a duplicate).
local applied = true
if cur then
  if t ~= cur.t then applied = t > cur.t
  elseif rank ~= cur.r then applied = rank > cur.r
  elseif ARGV[8] == cur.id then return 2
  else applied = ARGV[8] > cur.id end
end

-- issue 13 (attribution): a reply to a registered request carries the registration's
-- trailer (its sections, as in v1's body) at the end of its entry and its event.
local trailer = ''
if ARGV[20] ~= '' then
  local reg = redis.call('HGET', ARGV[21], ARGV[20])
  if reg then
    local comma = string.find(reg, ',', 1, true)
    if not comma then return redis.error_reply('CORRUPT unreadable consent request') end
    trailer = string.sub(reg, comma + 1)
  end
end

-- Append the entry to the shard's open segment.
local M = P .. 'm'
local meta = redis.call('HMGET', M, 'g', 'i', 'k')
local B = P .. 'b:' .. business
local notes = redis.call('HMGET', B, 'r', 'e')
local gn, open, last = meta[1], notes[1], notes[2]
local seg, off = 0, 0
if gn then seg, off = u(gn, 1, 3), u(gn, 4, 2) end
local packed = ARGV[13]
local back = cur and cur.newest or ''
local flags = string.byte(packed, 1) + (cur and 64 or 0) + (applied and 0 or 4)
local length = #packed + #back + #trailer
if length > SEGMENT then return redis.error_reply('ERR history entry too long') end
local entry = string.char(flags) .. bytes(length, 2) .. string.sub(packed, 4, 7)
  .. (applied and ARGV[11] or ARGV[12]) .. back .. string.sub(packed, 40) .. trailer
if not gn or off + #entry > SEGMENT then
  if gn then seg = seg + 1 end
  off = 0
  redis.call('SETRANGE', P .. 'g:' .. dec(seg), dec(SEGMENT - 1), '\0')
end
local ptr = bytes(seg, 3) .. bytes(off, 2)
redis.call('SETRANGE', P .. 'g:' .. dec(seg), dec(off), entry)
local meta_out = { 'g', bytes(seg, 3) .. bytes(off + #entry, 2) }

-- A long history's dedup hash: filled with the WALK entries a walk covered when the next one
-- is written, then kept up to date.
if count >= WALK then
  if count == WALK then
    local p = cur.newest
    for _ = 1, WALK do
      local off0 = u(p, 4, 2)
      local head = redis.call('GETRANGE', segment(P, p), dec(off0), dec(off0 + 43))
      local k = string.sub(head, 4, 7)
      redis.call('HSET', dedup, k, (redis.call('HGET', dedup, k) or '') .. p)
      if not has_bit(string.byte(head, 1), 6) then break end
      p = string.sub(head, 40, 44)
    end
  end
  redis.call('HSET', dedup, tag, (redis.call('HGET', dedup, tag) or '') .. ptr)
end

-- The time indexes, both sorted chunk arrays of (time, pointer): by received time (`bri`,
-- the app's clock, passed in) and by event time (`bei`). A record is appended to the padded
-- last chunk when its time is the newest, which it almost always is.
redis.call('HSET', B,
  'r', time_index_add(P, business, 'bri', 'xr', open, tonumber(ARGV[23]), ptr),
  'e', time_index_add(P, business, 'bei', 'xe', last, t, ptr))

if not applied then
  redis.call('HSET', M, unpack(meta_out))
  -- The newest entry moved; the current decision did not.
  local f = string.byte(hot, 1)
  if not has_bit(f, 3) then f = f + 8 end
  redis.call('HSET', bucket, field,
    string.char(f) .. string.sub(hot, 2, cur.head_end) .. ptr .. varint(count + 1))
  return 1
end

-- The hot record, the lease (native expiry), the due index, the calling list.
local now, now_us = clock()
redis.call('HSET', bucket, field, string.char(rank + (rank == 0 and 4 or 0)) .. time_bytes(t)
  .. (rank == 0 and time_bytes(e) or '') .. ARGV[8] .. ptr .. varint(count + 1))
local lease = P .. 't:' .. field
-- The due index (v2_lib.lua's due_edit): the grant it held for this pair leaves it; a new
-- temporary grant joins it, unless it lapsed on arrival (by the caller's clock: its EXPIRED
-- is published now, not swept).
if cur and cur.r == 0 then due_edit(P, cur.e, field, false) end
if rank == 0 then
  if e > now then
    redis.call('SET', lease, '1', 'PXAT', dec(e))
  else
    redis.call('DEL', lease)
  end
  if ARGV[16] ~= 'e' then due_edit(P, e, field, true) end
elseif cur and cur.r == 0 then
  redis.call('DEL', lease)
end
-- issue 13 (calling lists): a grant is listed (the sweep's claim removes a lapsed one); a
-- denial, or a grant lapsed on arrival, is not. A denial of a pair that had no decision, or a
-- denial, has nothing to remove.
local list = not (rank == 2 or ARGV[16] == 'e')
if list or (cur and cur.r ~= 2) then
  sorted_edit(P, business, 'li', P .. 'xl:' .. business, 7, 7, ARGV[4], u(ARGV[4], 1, 7), list)
end

local id = 0
if ARGV[16] ~= '' then
  id = log_event(P, now, now_us, tonumber(ARGV[15]), ARGV[16], ARGV[14] .. trailer,
    { i = meta[2], k = meta[3], out = meta_out })
end
redis.call('HSET', M, unpack(meta_out))
return id
