-- Layout v2 (docs/redis-layout-v2.md): the reads that follow a pointer, in one round trip.
-- Read only. lib.lua and v2_lib.lua are put in front of this source. Called by
-- `layout_v2.rs`. No shebang (it reads segments it only knows once it has read a hot record);
-- every key it reads shares the shard's hash tag with KEYS[1].
--
-- KEYS[1] a key of the shard (routing only)
-- ARGV[1] shard prefix "{prefix:sNN-k}:"
-- ARGV[2] what to read:
--   "c" current decisions: ARGV[3..] are pairs of (bucket number decimal, field); returns, per
--       pair, the current decision's entry, or "" if the pair has none
--   "t" chain tips: ARGV[3..] are pairs of (bucket number decimal, field); returns, per pair,
--       the history length and the newest entry's hash ("" if the pair has none)
--   "h" a history: ARGV[3] bucket number, ARGV[4] field; returns every entry, oldest first
--   "p" entries: ARGV[3..] pointers (5 bytes); returns each entry
--   "r" a records page of one shard: ARGV[3] the business's digits, ARGV[4] the index ("bri"
--       by received time, "bei" by event time), ARGV[5] its directory ("xr", "xe"), ARGV[6]
--       from (ms, inclusive), ARGV[7] to (ms, exclusive), ARGV[8] the time of the position to
--       start after (ms, or ""), ARGV[9] how many records past that time at least, ARGV[10]
--       the shard count, ARGV[11] hot-record buckets a shard. Returns, per record in index
--       order: its time (ms), its entry, its position in the pair's chain, and the hash of the
--       entry before it ("" if none). Every record at the position's time is included, and
--       every record at the last returned time, so the caller's finer order is complete.
--   "l" a calling list: ARGV[3] the business's digits, ARGV[4] the customer to start after
--       (7 bytes, or "" for the start), ARGV[5] at most this many; returns customers (7 bytes
--       each) in order, from the business's `li` chunks in their directory's order
--   "d" deliveries seen: ARGV[3..] are groups of 8 (bucket number, field, dedup tag, message
--       id as a packed text, sender "1"/"0", rank, stated ms, stated expiry ms or ""); returns
--       per delivery 0 (not seen), 2 (seen, said the same) or 3 (seen, said something else)
local P = ARGV[1]
local mode = ARGV[2]

-- The parsed hot record of `field` in bucket number `bucket`, or nil (v2_lib.lua's read_hot).
local function hot_of(bucket, field)
  local _, cur = read_hot(P .. 'p:' .. bucket, field)
  return cur
end

local out = {}
if mode == 'c' then
  for i = 3, #ARGV, 2 do
    local cur = hot_of(ARGV[i], ARGV[i + 1])
    local entry = ''
    if cur then
      entry = entry_at(P, cur.ptr)
      if not entry or #entry < 44 then
        return redis.error_reply('CORRUPT unreadable current entry')
      end
    end
    table.insert(out, entry)
  end
elseif mode == 't' then
  for i = 3, #ARGV, 2 do
    local cur = hot_of(ARGV[i], ARGV[i + 1])
    table.insert(out, cur and cur.n or 0)
    table.insert(out, cur and string.sub(entry_head(P, cur.newest, 39), 8, 39) or '')
  end
elseif mode == 'h' then
  local cur = hot_of(ARGV[3], ARGV[4])
  local ptr = cur and cur.newest
  local back = {}
  while ptr do
    local entry = entry_at(P, ptr)
    if not entry or #entry < 44 then
      return redis.error_reply('CORRUPT unreadable history entry')
    end
    table.insert(back, entry)
    if #back > cur.n then return redis.error_reply('CORRUPT history longer than its count') end
    ptr = has_bit(string.byte(entry, 1), 6) and string.sub(entry, 40, 44) or nil
  end
  for i = #back, 1, -1 do table.insert(out, back[i]) end
elseif mode == 'd' then
  for i = 3, #ARGV, 8 do
    local cur = hot_of(ARGV[i], ARGV[i + 1])
    local seen = cur and find_delivery(P, P .. 'd:' .. ARGV[i + 1], cur, {
      tag = ARGV[i + 2], msg = ARGV[i + 3], src = ARGV[i + 4], rank = tonumber(ARGV[i + 5]),
      stated = tonumber(ARGV[i + 6]),
      stated_expiry = ARGV[i + 7] ~= '' and tonumber(ARGV[i + 7]) or nil,
    })
    table.insert(out, seen or 0)
  end
elseif mode == 'l' then
  local business, after, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local akey = after ~= '' and u(after, 1, 7) or -1
  local dir = redis.call('ZRANGE', P .. 'xl:' .. business, 0, -1, 'WITHSCORES')
  for i = 1, #dir, 2 do
    -- A chunk holds keys from its own first key to the next chunk's first key.
    local next_first = dir[i + 3] and tonumber(dir[i + 3])
    if not next_first or next_first > akey then
      local chunk = redis.call('GET', P .. 'li:' .. business .. ':' .. dir[i]) or ''
      for at = 1, #chunk - 6, 7 do
        if u(chunk, at, 7) > akey then
          table.insert(out, string.sub(chunk, at, at + 6))
          if #out >= n then return out end
        end
      end
    end
  end
elseif mode == 'r' then
  local business, name = ARGV[3], ARGV[4]
  local from, to = time_key(tonumber(ARGV[6])), time_key(tonumber(ARGV[7]))
  local after = ARGV[8] ~= '' and time_key(tonumber(ARGV[8])) or nil
  local n = tonumber(ARGV[9])
  local shards, buckets = tonumber(ARGV[10]), tonumber(ARGV[11])
  local start = from
  if after and after > start then start = after end
  local biz7 = bytes(tonumber(business), 7)
  local dir = redis.call('ZRANGE', P .. ARGV[5] .. ':' .. business, 0, -1, 'WITHSCORES')
  -- Chunks whose first keys are equal (a run of equal times split over several) come in the
  -- directory in their ids' string order, not in key order; so the chunks of one first key
  -- are read as a group, and its records sorted, before any is taken. A group can be skipped
  -- when the next group starts before `start` (a chunk's keys are <= the next chunk's first).
  local groups = {}
  for i = 1, #dir, 2 do
    local score = tonumber(dir[i + 1])
    local g = groups[#groups]
    if g and g.score == score then
      table.insert(g.ids, dir[i])
    else
      table.insert(groups, { score = score, ids = { dir[i] } })
    end
  end
  local counted, last_key = 0, nil
  for gi, g in ipairs(groups) do
    if g.score >= to then break end
    local following = groups[gi + 1]
    if not following or following.score >= start then
      local recs = {}
      for _, id in ipairs(g.ids) do
        local chunk = redis.call('GET', P .. name .. ':' .. business .. ':' .. id) or ''
        for at = 1, #chunk - 10, 11 do
          local key = u(chunk, at, 6)
          if key >= start and key < to then
            table.insert(recs, { key, string.sub(chunk, at + 6, at + 10) })
          end
        end
      end
      if #g.ids > 1 then table.sort(recs, function(x, y) return x[1] < y[1] end) end
      for _, r in ipairs(recs) do
        local key, ptr = r[1], r[2]
        if counted >= n and key ~= last_key then return out end
        local entry = entry_at(P, ptr)
        if not entry or #entry < 53 then
          return redis.error_reply('CORRUPT unreadable history entry')
        end
        local back = has_bit(string.byte(entry, 1), 6)
        local cat = back and 45 or 40
        local field = biz7 .. string.sub(entry, cat, cat + 6)
        local cur = hot_of(hot_bucket(field, shards, buckets), field)
        if not cur then return redis.error_reply('CORRUPT indexed entry of no pair') end
        -- Its position: walk the pair's chain back from its newest entry. An entry the walk
        -- does not meet was cut out of the chain in Redis (a back pointer edited): it is
        -- answered as gone (its position negated, less one) at the position its own back
        -- chain gives it, as v1 answers an index member its history no longer holds, so an
        -- audit reports it instead of stopping.
        local pos, p = cur.n - 1, cur.newest
        while p ~= ptr do
          local head = entry_head(P, p, 44)
          if #head < 44 then return redis.error_reply('CORRUPT unreadable history entry') end
          if not has_bit(string.byte(head, 1), 6) or pos <= 0 then
            pos = nil
            break
          end
          p, pos = string.sub(head, 40, 44), pos - 1
        end
        if not pos then
          local steps, q = 0, entry
          while has_bit(string.byte(q, 1), 6) do
            if steps > cur.n then return redis.error_reply('CORRUPT history chain loops') end
            q = entry_head(P, string.sub(q, 40, 44), 44)
            if #q < 44 then return redis.error_reply('CORRUPT unreadable history entry') end
            steps = steps + 1
          end
          pos = -steps - 1
        end
        local prev = ''
        if back then prev = string.sub(entry_head(P, string.sub(entry, 40, 44), 39), 8, 39) end
        table.insert(out, dec(key - 140737488355328))
        table.insert(out, entry)
        table.insert(out, pos)
        table.insert(out, prev)
        if not after or key > after then counted = counted + 1 end
        last_key = key
      end
    end
  end
elseif mode == 'p' then
  for i = 3, #ARGV do table.insert(out, entry_at(P, ARGV[i]) or '') end
else
  return redis.error_reply('ERR unknown read')
end
return out
