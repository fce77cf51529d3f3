-- issue 17: a delivery's progress, fenced: written only while ARGV[1] is still the version.
-- KEYS[1] the subscription's hash. ARGV[1] the fencing token, ARGV[2] the cursor, ARGV[3] a new
-- state ('' for none), ARGV[4] its reason.
-- Returns 1 if written, 0 if the token is stale (or the subscription is gone).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'reason', ARGV[4])
end
return 1
