"""The Lua scripts of the Redis job store (redis_store.py): each runs as one atomic step.

Every write of a record goes through CREATE or PUT, which also keep the indexes
(queue, active set, history lists: INDEX_HISTORY in redis_history.py) in step
with it; that is what keeps Redis's view of a job one thing.
"""

from __future__ import annotations

from serve_app.jobs.redis_history import INDEX_HISTORY

# KEYS: job, jobs, queued, active, ended, filesdue, trim[, idem]
# ARGV: json, id, created_at, is_queued, is_active, ended, files, prefix, bykey ('' = no key)
# -> {1} created, {0, existing_json} idempotent hit, {-1} id taken
CREATE = (
    INDEX_HISTORY
    + """
if KEYS[8] then
  local existing = redis.call('GET', KEYS[8])
  if existing then
    local raw = redis.call('GET', ARGV[8] .. ':job:' .. existing)
    if raw then return {0, raw} end
    -- A key whose job is gone (cannot happen through delete, which removes
    -- both in one step): let the new job take the key over.
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2]) end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2]) end
if ARGV[9] ~= '' then redis.call('ZADD', ARGV[9], ARGV[3], ARGV[2]) end
index_history(ARGV[2], ARGV[6], ARGV[7])
if KEYS[8] then redis.call('SET', KEYS[8], ARGV[2]) end
return {1}
"""
)

# KEYS: job, jobs, queued, active, ended, filesdue, trim
# ARGV: json, id, created_at, is_queued, is_active, ended, files[, expected_json]
# -> 1 written, 0 the record changed since it was read, -1 no such job
PUT = (
    INDEX_HISTORY
    + """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if ARGV[8] and current ~= ARGV[8] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
else redis.call('ZREM', KEYS[3], ARGV[2]) end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
else redis.call('ZREM', KEYS[4], ARGV[2]) end
index_history(ARGV[2], ARGV[6], ARGV[7])
return 1
"""
)

# KEYS: job, jobs, queued, active, ended, filesdue, trim, events, eventseq[, idem]
# ARGV: id, bykey ('' = no key)
DELETE = """
redis.call('DEL', KEYS[1], KEYS[8], KEYS[9])
for i = 2, 7 do redis.call('ZREM', KEYS[i], ARGV[1]) end
if ARGV[2] ~= '' then redis.call('ZREM', ARGV[2], ARGV[1]) end
-- Only our own key: another job may hold it if ours never did.
if KEYS[10] and redis.call('GET', KEYS[10]) == ARGV[1] then redis.call('DEL', KEYS[10]) end
return 1
"""

# KEYS: jobs
# ARGV: after ('' for the first page), count, 'asc'|'desc', prefix
# -> false if `after` is unknown, else the records (JSON) of the page
LIST = """
local asc = ARGV[3] == 'asc'
local start = 0
if ARGV[1] ~= '' then
  local rank
  if asc then rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  else rank = redis.call('ZREVRANK', KEYS[1], ARGV[1]) end
  if not rank then return false end
  start = rank + 1
end
local stop = start + tonumber(ARGV[2]) - 1
local ids
if asc then ids = redis.call('ZRANGE', KEYS[1], start, stop)
else ids = redis.call('ZREVRANGE', KEYS[1], start, stop) end
if #ids == 0 then return {} end
local keys = {}
for i, id in ipairs(ids) do keys[i] = ARGV[4] .. ':job:' .. id end
return redis.call('MGET', unpack(keys))
"""

# KEYS: job, eventseq, events
# ARGV: event JSON
# -> seq, or -1 if there is no such job
APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], '0-' .. seq, 'e', ARGV[1])
return seq
"""
