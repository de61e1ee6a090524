"""The scripts of a worker's lease: publish, heartbeat, finish, release (SIGTERM's hand-back).

Fencing: ``claim`` increments the job's ``fence`` and hands it to the worker; every later write of
that worker first checks that the fence is still its own, and the table (``prelude.RULES``) whether
the job's state still accepts the write. A worker that was paused past the claim time (a zombie)
finds the fence moved on and its writes refused, so it cannot publish a second result.
"""

from __future__ import annotations

from sdworker.stores.redis.scripts.prelude import PRELUDE

# KEYS: job, ev, pv   ARGV: fence, kind, data_json, step, total, maxlen, image (previews only)
PUBLISH = (
    PRELUDE
    + """
if not rule(redis.call('HGET', KEYS[1], 'state'), 'publish') or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return 0
end
local seq = append(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[6])
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[1], 'step', ARGV[4], 'total', ARGV[5]) end
if ARGV[2] == 'preview' then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'seq', seq, 'image', ARGV[7])
end
return seq
"""
)

# KEYS: job, ev, pv, qstream, img_0..img_n-1
# ARGV: fence, outcome (completed|failed|cancelled), data_json, ttl, maxlen, seeds_json, width, height, code,
#       message, end_json, image_0..image_n-1
# -> the last event's seq, or 0 when the job did not end as the worker said (a stale fence, a finished
# job, or a cancel that arrived first and wins)
FINISH = (
    PRELUDE
    + """
local actions = {completed = 'complete', failed = 'fail', cancelled = 'cancel'}
local t = rule(redis.call('HGET', KEYS[1], 'state'), actions[ARGV[2]])
if (not t) or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return 0
end
if t.to ~= ARGV[2] or (t.to == 'cancelled' and redis.call('HGET', KEYS[1], 'cancel_code')) then
  -- Another end than the worker's: a cancel asked before this result was stored (e.g. while the worker
  -- flushed its outbox) wins; a job the fleet cancelled (its deadline passed) ends with that code.
  local seq = cancel_now(KEYS[1], KEYS[2], ARGV[5])
  expire(ARGV[4], KEYS[1], KEYS[2], KEYS[3])
  ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
  if t.to ~= ARGV[2] then return 0 end
  return seq
end
strip_inputs(KEYS[1])
local n = #KEYS - 4
local bytes = 0
for i = 1, n do
  redis.call('SET', KEYS[4 + i], ARGV[11 + i], 'PX', ARGV[4])
  bytes = bytes + #ARGV[11 + i]
end
redis.call('HSET', KEYS[1], 'state', t.to, 'finished', at, 'images', n, 'bytes', bytes)
local seq
if t.to == 'completed' then
  redis.call('HSET', KEYS[1], 'seeds', ARGV[6], 'width', ARGV[7], 'height', ARGV[8],
    'step', redis.call('HGET', KEYS[1], 'total'))
  seq = append(KEYS[1], KEYS[2], 'complete', ARGV[3], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'error_code', ARGV[9], 'error_message', ARGV[10])
  seq = append(KEYS[1], KEYS[2], 'error', ARGV[3], ARGV[5])
end
if ARGV[11] ~= '' then seq = append(KEYS[1], KEYS[2], 'end', ARGV[11], ARGV[5]) end
expire(ARGV[4], KEYS[1], KEYS[2], KEYS[3])
retire(KEYS[1])
ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
return seq
"""
)

# KEYS: job, qstream, watchers   ARGV: fence, entry, consumer
# -> {1, control, watchers} while the lease holds | {0} lost
HEARTBEAT = (
    PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return {0} end
if not rule(redis.call('HGET', KEYS[1], 'state'), 'heartbeat') then return {0} end
local pending = redis.call('XPENDING', KEYS[2], 'workers', ARGV[2], ARGV[2], 1)
if #pending == 0 then return {0} end
-- Another consumer holds the entry: it took the job over (the fence tells, at its claim), unless it
-- is a batch partner's entry that a plain read handed it a moment ago (the job still names us).
if pending[1][2] ~= ARGV[3] and redis.call('HGET', KEYS[1], 'consumer') ~= ARGV[3] then return {0} end
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[3], 0, ARGV[2], 'JUSTID')
local watchers = 0
for _, count in ipairs(redis.call('HVALS', KEYS[3])) do watchers = watchers + tonumber(count) end
return {1, redis.call('HGET', KEYS[1], 'control') or '', watchers}
"""
)

# KEYS: job, qstream, queued, queued_model, ev, pv   ARGV: fence, job_id, ttl, maxlen
# Hand a running job back to the queue now (SIGTERM): not an attempt; the fence moves on. A job being
# cancelled is cancelled instead (the table): nobody else would ever finish its cancel.
# -> 1 handed back | 2 cancelled | 0 not (a stale fence, a finished job)
RELEASE = (
    PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
local t = rule(redis.call('HGET', KEYS[1], 'state'), 'release')
if not t then return 0 end
if t.to == 'cancelled' then
  cancel_now(KEYS[1], KEYS[5], ARGV[4])
  expire(ARGV[3], KEYS[1], KEYS[5], KEYS[6])
  ack(KEYS[2], redis.call('HGET', KEYS[1], 'entry'))
  return 2
end
local old = redis.call('HGET', KEYS[1], 'entry')
redis.call('XACK', KEYS[2], 'workers', old)
redis.call('XDEL', KEYS[2], old)
local entry = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HINCRBY', KEYS[1], 'attempt', -1)  -- a hand-back is not an attempt
redis.call('HSET', KEYS[1], 'entry', entry, 'state', t.to, 'handback', 1, 'worker', '', 'step', 0)
local created = tonumber(redis.call('HGET', KEYS[1], 'created'))
redis.call('ZADD', KEYS[3], created, ARGV[2])
redis.call('ZADD', KEYS[4], created, ARGV[2])
fair_front(KEYS[1], ARGV[2], at)
return 1
"""
)
