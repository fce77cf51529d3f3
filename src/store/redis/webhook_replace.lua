-- issue 17: an operator's change to one subscription (state, keys, cursor), if nothing changed
-- it since it was read. Raises the version and ends the lease, so the delivering replica stops
-- moving the cursor and re-reads the record.
-- KEYS[1] the subscription's hash, KEYS[2] its lease. ARGV[1] the version read, ARGV[2] the
-- settings, ARGV[3] the state, ARGV[4] its reason, ARGV[5] the cursor.
-- Returns 1 if written, 0 if the version moved (or the subscription is gone).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'state', ARGV[3], 'reason', ARGV[4], 'cursor', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('DEL', KEYS[2])
return 1
