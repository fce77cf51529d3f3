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
--   "t" chain tips: the same arguments; returns, per pair, its history length and the hash of
--       its newest entry ("" if it has none)
--   "h" a history: ARGV[3] bucket number, ARGV[4] field; returns every entry, oldest first
--   "p" entries: ARGV[3..] pointers (5 bytes); returns each entry
--   "d" deliveries seen: ARGV[3..] are groups of 8 (bucket number, field, dedup tag, message
--       id as a packed text, sender "1"/"0", rank, stated ms, stated expiry ms or ""); returns
--       per delivery 0 (not seen), 2 (seen, said the same) or 3 (seen, said something else)
local P = ARGV[1]
local mode = ARGV[2]

local function hot_of(bucket, field)
  local hot = redis.call('HGET', P .. 'p:' .. bucket, field)
  if not hot then return nil end
  local cur = parse_hot(hot)
  if not cur then return redis.error_reply('CORRUPT unreadable hot record') end
  return cur
end

local out = {}
if mode == 'c' or mode == 't' then
  for i = 3, #ARGV, 2 do
    local cur = hot_of(ARGV[i], ARGV[i + 1])
    if cur and cur.err then return cur end
    if mode == 'c' then
      local entry = ''
      if cur then
        entry = entry_at(P, cur.ptr)
        if not entry or #entry < 44 then
          return redis.error_reply('CORRUPT unreadable current entry')
        end
      end
      table.insert(out, entry)
    else
      table.insert(out, cur and cur.n or 0)
      table.insert(out, cur and string.sub(entry_head(P, cur.newest, 39), 8, 39) or '')
    end
  end
elseif mode == 'h' then
  local cur = hot_of(ARGV[3], ARGV[4])
  if cur and cur.err then return cur end
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
    if cur and cur.err then return cur end
    local seen = cur and find_delivery(P, P .. 'd:' .. ARGV[i + 1], cur, {
      tag = ARGV[i + 2], msg = ARGV[i + 3], src = ARGV[i + 4], rank = tonumber(ARGV[i + 5]),
      stated = tonumber(ARGV[i + 6]),
      stated_expiry = ARGV[i + 7] ~= '' and tonumber(ARGV[i + 7]) or nil,
    })
    table.insert(out, seen or 0)
  end
elseif mode == 'p' then
  for i = 3, #ARGV do table.insert(out, entry_at(P, ARGV[i]) or '') end
else
  return redis.error_reply('ERR unknown read')
end
return out
