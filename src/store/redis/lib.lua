-- Helpers shared by record.lua and claim_expired.lua: ONE copy. This file is not a script by
-- itself: store/redis/mod.rs puts it in front of each script's source (`concat!`) when the
-- `redis::Script` is built, so both scripts run exactly these functions. Only `local`
-- functions here, and nothing that touches KEYS or ARGV.

-- Base-36 milliseconds (codec::base36). Times stay below 2^53, so Lua numbers hold them.
local function b36(s)
  if string.sub(s, 1, 1) == '-' then return -tonumber(string.sub(s, 2), 36) end
  return tonumber(s, 36)
end

-- The header of a decision body from position `at` of `v`.
-- Returns { r, t, e (nil unless temporary), head (the header text) }.
local function header(v, at)
  local head, r, t, e = string.match(v, '^(([012])(%-?[0-9a-z]+),(%-?[0-9a-z]*)),', at)
  if not head then return nil end
  return { r = tonumber(r), t = b36(t), e = (e ~= '' and b36(e) or nil), head = head }
end

-- The newest event id that trimming `stream` to MINID `min`-0 removes, or nil. Looks at the
-- oldest entry first: with nothing older than MINID, Redis 7.0's `XREVRANGE (minid - COUNT 1`
-- walks the whole stream backwards (its seek finds no node and restarts from the end), which
-- made every XADD cost O(events retained).
local function trimmed_by(stream, min, minid)
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if not oldest[1] or tonumber(string.match(oldest[1][1], '^(%d+)%-')) >= min then
    return nil
  end
  local gone = redis.call('XREVRANGE', stream, '(' .. minid, '-', 'COUNT', 1)
  return gone[1] and gone[1][1]
end

-- The id of the next event in `stream`: the microsecond it is logged at, as
-- `<ms>-<microsecond within the ms>`, so events of different shards sort in the order they
-- were logged (one Redis clock stamps every script). Never at or before the stream's newest id
-- (a clock stepped back, or two events in one microsecond): then that id's next sequence.
local function next_event_id(stream)
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  local ms = tonumber(t[1]) * 1000 + math.floor(us / 1000)
  local seq = us % 1000
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if newest[1] then
    local lms, lseq = string.match(newest[1][1], '^(%d+)%-(%d+)$')
    lms, lseq = tonumber(lms), tonumber(lseq)
    if ms < lms or (ms == lms and seq <= lseq) then
      ms, seq = lms, lseq + 1
    end
  end
  return string.format('%.0f-%.0f', ms, seq)
end

-- Redis's clock, in milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
