"""The scripts of the queue: submit, claim (and a batch's partners), positions, watchers, and ending
a job that no live worker serves. Each is atomic; the rules come from the table (``prelude.RULES``)."""

from __future__ import annotations

from sdworker.stores.redis.scripts.prelude import PRELUDE

# KEYS: job, ev, queued, queued_model, qstream, jobs, models
# ARGV: job_id, spec_json, owner, model, created, max_queue, total, maxlen, max_results, batch_key, priority,
#       done_spec_json ('' when the job has no input images), max_result_bytes
# Every command is O(1) or O(log N) in the queue's depth, so a deep queue does not slow it; the
# position costs O(owners waiting at the job's priority) (fair.py), and a job that goes ahead of
# others tells the watched ones their new place (O(watched x owners)).
SUBMIT = (
    PRELUDE
    + """
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return -1 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', 0, 'fence', 0, 'seq', 0, 'spec', ARGV[2],
  'owner', ARGV[3], 'model', ARGV[4], 'created', ARGV[5], 'step', 0, 'total', ARGV[7], 'handback', 0,
  'control', '', 'keep', ARGV[9], 'bkey', ARGV[10], 'prio', ARGV[11], 'keep_bytes', ARGV[13])
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'done_spec', ARGV[12]) end
local entry = redis.call('XADD', KEYS[5], '*', 'job_id', ARGV[1])
redis.call('HSET', KEYS[1], 'entry', entry)
local score = tonumber(ARGV[5])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('ZADD', KEYS[4], score, ARGV[1])
redis.call('ZADD', KEYS[6], score, ARGV[1])
redis.call('SADD', KEYS[7], ARGV[4])
fair_add(KEYS[1], ARGV[1])
local position = fair_position(KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], 'pos', position)
append(KEYS[1], KEYS[2], 'queued', cjson.encode({position = position}), ARGV[8])
if position < redis.call('ZCARD', KEYS[4]) then
  -- It went ahead of others (a higher priority, an owner's first turn): the watched ones hear it.
  local prefix = string.match(KEYS[1], '^(.*):job:[^:]+$')
  push_positions(prefix, prefix .. ':watchq:' .. ARGV[4], ARGV[8])
end
return position
"""
)

# KEYS: job, ev, pv, qstream, queued, queued_model, dead
# ARGV: entry, consumer, max_attempts, job_id, maxlen, ttl, worker_label, fresh (1: read with '>'), prefix
# -> {1, fence, attempt, job_id, entry} claimed | {0} skip (gone, finished, cancelled, stale entry)
#    | {-1} dead-lettered
# The entry read is a ticket (fair.py): a queued job's ticket starts the head of the claim order, which
# may be another job (its id and entry are returned); a running job's (lost by its worker, found by
# XAUTOCLAIM) is that job's retry. O(log N) in the queue's depth: no other queued job is read or
# written but the one taken (positions are computed when asked, and pushed by POSITIONS only to the
# few that somebody watches).
CLAIM = (
    PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not (rule(state, 'claim') or rule(state, 'lost')) then
  -- Gone or finished: nothing can take it.
  ack(KEYS[4], ARGV[1]); return {0}
end
if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then ack(KEYS[4], ARGV[1]); return {0} end
if ARGV[8] == '1' and state ~= 'queued' then
  -- A batch partner's entry, taken out of order by PARTNERS (XCLAIM FORCE), reached a worker through
  -- a plain read (maybe its own holder, while it stores the batch's results): the holder keeps it. A
  -- lost worker's entries come back only through XAUTOCLAIM, never through a plain read.
  local holder = redis.call('HGET', KEYS[1], 'consumer')
  if holder and holder ~= ARGV[2] then redis.call('XCLAIM', KEYS[4], 'workers', holder, 0, ARGV[1], 'JUSTID') end
  return {0}
end
local id, entry = ARGV[4], ARGV[1]
if state == 'queued' then
  local best = fair_head(ARGV[9], redis.call('HGET', KEYS[1], 'model'), 1)[1]
  if best and best ~= id then
    -- Another job is first: this worker takes that job's own entry, and the job whose ticket it read
    -- gets a new one (so it still has exactly one, and some worker wakes for it).
    ack(KEYS[4], entry)
    redis.call('HSET', KEYS[1], 'entry', redis.call('XADD', KEYS[4], '*', 'job_id', id))
    id = best
    local job = ARGV[9] .. ':job:' .. id
    entry = redis.call('HGET', job, 'entry')
    redis.call('XCLAIM', KEYS[4], 'workers', ARGV[2], 0, entry, 'FORCE', 'JUSTID')
    local result = take(job, job .. ':ev', job .. ':pv', KEYS[4], KEYS[5], KEYS[6], KEYS[7], entry, ARGV[2],
      tonumber(ARGV[3]), id, ARGV[5], ARGV[6], ARGV[7])
    return {result[1], result[2] or 0, result[3] or 0, id, entry}
  end
end
local result = take(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], entry, ARGV[2],
  tonumber(ARGV[3]), id, ARGV[5], ARGV[6], ARGV[7])
return {result[1], result[2] or 0, result[3] or 0, id, entry}
"""
)

# KEYS: queued_model, qstream, queued, dead
# ARGV: prefix, batch_key, limit, window, consumer, max_attempts, maxlen, ttl, worker_label, model
# -> {job_id, entry, fence, attempt, ...} for each partner taken
# Batch partners for a job just claimed: among the first ``window`` waiting jobs of the model in the
# claim order (fair.py: a constant, so this is O(log N) whatever the depth), the ones with the same
# batch key, in that order. Their stream entries have not been delivered yet: XCLAIM FORCE makes them pending on this
# worker, so a worker that dies with a batch loses none of it (XAUTOCLAIM hands each job on). A job
# that does not fit is left where it is, for the next idle worker.
PARTNERS = (
    PRELUDE
    + """
local taken = {}
if ARGV[2] == '' then return taken end
local ids = fair_head(ARGV[1], ARGV[10], tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  if #taken >= 4 * tonumber(ARGV[3]) then break end
  local job = ARGV[1] .. ':job:' .. id
  local entry = redis.call('HGET', job, 'entry')
  local attempt = tonumber(redis.call('HGET', job, 'attempt') or '0') + 1
  if entry and rule(redis.call('HGET', job, 'state'), 'claim') and redis.call('HGET', job, 'bkey') == ARGV[2]
      and attempt <= tonumber(ARGV[6]) then
    redis.call('XCLAIM', KEYS[2], 'workers', ARGV[5], 0, entry, 'FORCE', 'JUSTID')
    local result = take(job, job .. ':ev', job .. ':pv', KEYS[2], KEYS[3], KEYS[1], KEYS[4], entry,
      ARGV[5], tonumber(ARGV[6]), id, ARGV[7], ARGV[8], ARGV[9])
    if result[1] == 1 then
      for _, v in ipairs({id, entry, result[2], result[3]}) do table.insert(taken, v) end
    end
  end
end
return taken
"""
)

# KEYS: job, ev, pv, qstream, queued, queued_model   ARGV: job_id, cutoff, ttl, maxlen, message
# A job still queued since before ``cutoff`` for a model no live worker serves ends failed with
# ``no_worker`` and leaves the queue (its --max-queue place is free again). -> 1 ended | 0 not (any more)
NO_WORKER = (
    PRELUDE
    + """
local t = rule(redis.call('HGET', KEYS[1], 'state'), 'no_worker')
if not t then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'created')) > tonumber(ARGV[2]) then return 0 end
leave_queue(KEYS[1], ARGV[1], KEYS[4], KEYS[5], KEYS[6])
finish_job(KEYS[1], KEYS[2], t.to, 'no_worker', ARGV[5], ARGV[4])
expire(ARGV[3], KEYS[1], KEYS[2], KEYS[3])
return 1
"""
)

# KEYS: watched (P:watchq:{model})   ARGV: prefix, maxlen
# After the queue moved (a claim, a cancel): new positions to the watched queued jobs (push_positions).
POSITIONS = (
    PRELUDE
    + """
return push_positions(ARGV[1], KEYS[1], ARGV[2])
"""
)

# KEYS: watchers (P:job:{id}:w), job   ARGV: node, count, ttl_seconds, prefix, job_id
# A node says how many watch a job there; a queued job joins its model's ``watched`` set, so it
# hears its new position when the queue moves (POSITIONS).
WATCH = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if tonumber(ARGV[2]) > 0 and redis.call('HGET', KEYS[2], 'state') == 'queued' then
  redis.call('SADD', ARGV[4] .. ':watchq:' .. redis.call('HGET', KEYS[2], 'model'), ARGV[5])
end
return 1
"""
