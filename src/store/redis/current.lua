#!lua flags=no-writes
-- Reads ONE pair's current decision: the answer to a check, in one round trip.
-- Called by `RedisStore::current` and (pipelined) `current_many` (mod.rs); formats in codec.rs.
-- Read-only (`no-writes`), so it also runs when Redis is out of memory.
--
-- KEYS[1] consent {p:sNN}:c:<pair>  "<rank><decided>,<expires>,<history index>"
-- KEYS[2] history {p:sNN}:h:<pair>  "<a|s><dedup id><received>,<D>" per kept decision
-- Returns the current decision's history entry, or nil if the pair has none.
--
-- The consent key points at the entry. Without a consent key, the pair either has no
-- decision, or its current decision is a temporary grant whose key expired natively: the
-- history's last applied entry (a check then answers EXPIRED, not NO_CONSENT). Twin of
-- `current` in claim_expired.lua.

local c = redis.call('GET', KEYS[1])
if not c then
  local entries = redis.call('LRANGE', KEYS[2], 0, -1)
  for i = #entries, 1, -1 do
    if string.sub(entries[i], 1, 1) == 'a' then
      return entries[i]
    end
  end
  return false
end

local head, idx = string.match(c, '^([012]%-?[0-9a-z]+,%-?[0-9a-z]*),(%d+)$')
local v = head and redis.call('LINDEX', KEYS[2], tonumber(idx))
-- The entry must be an applied one whose header is the one the consent key holds.
local body = v and string.sub(v, 1, 1) == 'a' and string.match(v, '^%-?[0-9a-z]+,()', 18)
if not body or string.sub(v, body, body + #head) ~= head .. ',' then
  return redis.error_reply('CORRUPT unreadable consent value at ' .. KEYS[1])
end
return v
