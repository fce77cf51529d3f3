-- issue 17: give up a subscription's lease if this holder still holds it with this token.
-- KEYS[1] the lease. ARGV[1] `<holder> <token>`.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
