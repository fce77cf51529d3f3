-- issue 17: take or renew the delivery lease of one outbound webhook subscription.
-- KEYS[1] the subscription's hash, KEYS[2] its lease (both under the subscription's hash tag).
-- ARGV[1] the holder (a replica's id), ARGV[2] the lease's length in ms.
-- Returns -1 if the subscription does not exist, 0 if another holder has a live lease, else the
-- fencing token: the same one when the holder renews the lease it holds (and no operator change
-- raised the version since), else a new one (the raised version).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local current = redis.call('GET', KEYS[2])
if current then
  local holder, token = string.match(current, '^(.*) (%d+)$')
  if holder ~= ARGV[1] then
    return 0
  end
  if tonumber(token) == fence then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return fence
  end
end
fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
