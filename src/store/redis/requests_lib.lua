-- issue 13 (attribution): the part of a registration both layouts share (requests.lua, and
-- layout v2's v2_requests.lua), put in front of each when it is built (store/redis/mod.rs).
-- Only `local` functions, nothing that touches KEYS or ARGV.
--
-- `requests`: the pair's HASH request message id -> "<sent at>,<trailer>"; `sent_log`: its
-- ZSET request message id, score = sent at (ms). `now` is the app's clock (ms).

-- THE BUDGET RULE, the twin of `domain::attribution::fits` (src/domain/attribution.rs);
-- change both together: for every limit, no window of its length holding `at` may hold more
-- than `max` requests; a request at `e` shares a window with `at` when |at - e| < window.
local function budget_fits(times, at, limits)
  for _, l in ipairs(limits) do
    local near, starts = {}, {}
    for _, e in ipairs(times) do
      if math.abs(e - at) < l.w then
        near[#near + 1] = e
        if e <= at then starts[#starts + 1] = e end
      end
    end
    starts[#starts + 1] = at
    for _, s in ipairs(starts) do
      local inside = 0
      for _, e in ipairs(near) do
        if e >= s and e < s + l.w then inside = inside + 1 end
      end
      if inside + 1 > l.max then return false end
    end
  end
  return true
end

-- Purges registrations past their retention, then answers a retry ({ 1 } the same
-- registration before, { 2 } the id registered with other fields) or a request over budget
-- ({ 3, sent at, ... }: every retained registration's sent-at); nil: go on.
-- `limits_arg`: "<max>:<window ms>;...".
local function registration_checks(requests, sent_log, id, registration, sent, now, retention,
                                   limits_arg)
  -- Purge registrations past their retention (the keys also expire as a whole, see below).
  local old = redis.call('ZRANGEBYSCORE', sent_log, '-inf',
    '(' .. string.format('%.0f', now - retention))
  for _, o in ipairs(old) do
    redis.call('HDEL', requests, o)
    redis.call('ZREM', sent_log, o)
  end

  local known = redis.call('HGET', requests, id)
  if known then
    if known == registration then return { 1 } end
    return { 2 }
  end

  local limits = {}
  for max, w in string.gmatch(limits_arg, '(%d+):(%d+)') do
    limits[#limits + 1] = { max = tonumber(max), w = tonumber(w) }
  end
  local logged = redis.call('ZRANGE', sent_log, 0, -1, 'WITHSCORES')
  local times = {}
  for i = 2, #logged, 2 do times[#times + 1] = tonumber(logged[i]) end
  if not budget_fits(times, sent, limits) then
    local out = { 3 }
    for _, t in ipairs(times) do out[#out + 1] = t end
    return out
  end
  return nil
end

-- Stores the registration. Both keys live until the newest registration's retention ends
-- (relative to the app's clock, as the purge).
local function store_registration(requests, sent_log, id, registration, sent, now, retention)
  redis.call('HSET', requests, id, registration)
  redis.call('ZADD', sent_log, sent, id)
  local newest = redis.call('ZRANGE', sent_log, -1, -1, 'WITHSCORES')
  local ttl = tonumber(newest[2]) + retention - now
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', requests, string.format('%.0f', ttl))
  redis.call('PEXPIRE', sent_log, string.format('%.0f', ttl))
end
