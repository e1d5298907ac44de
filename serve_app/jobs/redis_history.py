"""The Redis job store's history zsets: what retention, expired files and event-log trimming
read (jobs/expiry.py), and the one-time indexing of a store written before they existed.

- `P:bykey:{key_id}` every job of one API key, score created_at (lists per key)
- `P:ended`          terminal jobs, score `ended_at` (retention)
- `P:filesdue`       completed jobs whose own files the sweep has not deleted, score
                     `own_files_expire_at`
- `P:trim`           terminal jobs whose event logs the sweep has not trimmed, score `ended_at`
- `P:schema`         SCHEMA_VERSION once every record is in them

Every script that writes a record must keep them in step: it runs INDEX_HISTORY's
`index_history` with the scores `score()` makes (redis_store.py's `_index_args`).
"""

from __future__ import annotations

# The history zsets of one record: ended and trim share the `ended_at` score ('' = not
# terminal), filesdue has the files' expiry ('' = none). A write puts back what a sweep
# took off (trim, filesdue): the next sweep then redoes one idempotent step, once.
# KEYS[5..7]: ended, filesdue, trim; ARGV[6], ARGV[7]: ended score, files score
INDEX_HISTORY = """
local function index_history(id, ended, files)
  if ended ~= '' then
    redis.call('ZADD', KEYS[5], ended, id)
    redis.call('ZADD', KEYS[7], ended, id)
  else
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[7], id)
  end
  if files ~= '' then redis.call('ZADD', KEYS[6], files, id)
  else redis.call('ZREM', KEYS[6], id) end
end
"""

# KEYS: job, ended, filesdue, trim, bykey (or the job key again when none)
# ARGV: id, created_at, ended, files, has_key
# Indexes one record of a store written before the history zsets: only if it still
# exists (a delete meanwhile must not leave entries behind), and only adds (terminal
# is final, so a record read a moment ago cannot be indexed wrongly).
REINDEX = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1]) end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
return 1
"""

# What `P:schema` holds once every record is in the history zsets.
SCHEMA_VERSION = "2"


def score(value: float | None) -> str:
    """A zset score as the scripts take it: repr() round-trips a double exactly; '' is none."""
    return "" if value is None else repr(value)
