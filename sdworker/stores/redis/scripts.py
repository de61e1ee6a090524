"""Every state change of a job in Redis is one Lua script, so it is atomic: nothing can see a job
half-claimed or half-finished, and two workers can never both win.

Fencing: ``claim`` increments the job's ``fence`` and hands it to the worker; every later write of
that worker (``publish``, ``heartbeat``, ``finish``, ``release``) first checks that the fence is still
its own and the job still running. A worker that was paused past the claim time (a zombie) finds the
fence moved on and its writes refused, so it cannot publish a second result.

Events: each script that appends an event increments the job's ``seq`` and appends with the explicit
stream id ``0-<seq>``, so the SSE ids are the same small integers on every API node and keep
increasing across attempts. Preview images never enter the event stream: a preview event names its
seq and the image lives in the job's ``pv`` hash, replaced by the next one.
"""

from __future__ import annotations

from sdworker.stores.redis.fair import FAIR_LUA

# Shared Lua: the claim order's helpers (fair.py), the event time and appending one event.
_PRELUDE = FAIR_LUA + """
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local function append(job, ev, kind, data, maxlen)
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  redis.call('XADD', ev, 'MAXLEN', '~', maxlen, '0-' .. seq, 't', kind, 'd', data, 'at', at)
  return seq
end
local function expire(ttl, ...)  -- ttl in milliseconds
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, ttl) end
end
local function fail_with_end(job, ev, code, msg, maxlen)
  -- the typed terminal event, then rbee's end marker (events/types.py: end_marker), together
  append(job, ev, 'error', cjson.encode({code = code, message = msg}), maxlen)
  local marker = '[ERROR] ' .. msg
  if code == 'cancelled' then marker = '[CANCELLED]' end
  return append(job, ev, 'end', cjson.encode({marker = marker}), maxlen)
end
local function strip_inputs(job)
  -- A finished job does not need its input images (up to max_body_bytes each): the spec keeps null.
  -- (JSON written by json.dumps; base64 has no braces, so %b{} spans exactly the image object.)
  local spec = redis.call('HGET', job, 'spec')
  if spec then
    local stripped = string.gsub(spec, '"init_image":%s*%b{}', '"init_image": null')
    stripped = string.gsub(stripped, '"mask_image":%s*%b{}', '"mask_image": null')
    if stripped ~= spec then redis.call('HSET', job, 'spec', stripped) end
  end
end
local function retire(job)
  -- A job just finished: it joins <prefix>:done, and the oldest finished jobs above the job's 'keep'
  -- (max_results at submit) go at once with all their keys and their place in the jobs index.
  local prefix, id = string.match(job, '^(.*):job:([^:]+)$')
  local keep = tonumber(redis.call('HGET', job, 'keep') or '0')
  if (not prefix) or keep <= 0 then return end
  local done = prefix .. ':done'
  redis.call('ZADD', done, tonumber(at), id)
  local excess = redis.call('ZCARD', done) - keep
  if excess <= 0 then return end
  local popped = redis.call('ZPOPMIN', done, excess)
  for i = 1, #popped, 2 do
    local old = prefix .. ':job:' .. popped[i]
    local n = tonumber(redis.call('HGET', old, 'images') or '0')
    for j = 0, n - 1 do redis.call('DEL', old .. ':img:' .. j) end
    redis.call('DEL', old, old .. ':ev', old .. ':pv')
    redis.call('ZREM', prefix .. ':jobs', popped[i])
  end
end
local function cancel_now(job, ev, maxlen)
  -- A cancel the fleet asked for itself (DEADLINE) ends with its own code; a client's with 'cancelled'.
  local code = redis.call('HGET', job, 'cancel_code') or 'cancelled'
  local msg = 'the job was cancelled'
  if code ~= 'cancelled' then msg = redis.call('HGET', job, 'cancel_message') or msg end
  redis.call('HSET', job, 'state', 'cancelled', 'finished', at, 'error_code', code, 'error_message', msg)
  strip_inputs(job)
  local seq = fail_with_end(job, ev, code, msg, maxlen)
  retire(job)
  return seq
end
local function push_positions(prefix, watched, maxlen)
  -- A new position to each queued job somebody watches (WATCH put it in ``watched``), only when it
  -- changed: O(watched x owners), never O(queue). Everyone else asks (fair.POSITION, in a GET).
  local moved = 0
  for _, id in ipairs(redis.call('SMEMBERS', watched)) do
    local job = prefix .. ':job:' .. id
    local position = false
    if redis.call('HGET', job, 'state') == 'queued' and redis.call('EXISTS', job .. ':w') == 1 then
      position = fair_position(job, id)
    end
    if not position then
      redis.call('SREM', watched, id)
    elseif redis.call('HGET', job, 'pos') ~= tostring(position) then
      redis.call('HSET', job, 'pos', position)
      append(job, job .. ':ev', 'queued', cjson.encode({position = position}), maxlen)
      moved = moved + 1
    end
  end
  return moved
end
local function ack(stream, entry)
  if entry then
    redis.call('XACK', stream, 'workers', entry)
    redis.call('XDEL', stream, entry)
  end
end
local function take(job, ev, pv, qstream, queued, queued_model, dead, entry, consumer, max_attempts, id,
                    maxlen, ttl, label)
  -- One claim of one queued (or lost) job: fence it, or cancel/dead-letter it. O(1).
  local state = redis.call('HGET', job, 'state')
  local handback = redis.call('HGET', job, 'handback') == '1'
  local attempt = tonumber(redis.call('HGET', job, 'attempt')) + 1
  fair_remove(job, id)
  redis.call('ZREM', queued, id)
  redis.call('ZREM', queued_model, id)
  redis.call('DEL', pv)
  if state == 'cancelling' then
    cancel_now(job, ev, maxlen)
    expire(ttl, job, ev)
    ack(qstream, entry); return {0}
  end
  if attempt > max_attempts then
    local msg = 'the job was lost with its worker ' .. (attempt - 1) .. ' times; it is in the dead-letter list'
    redis.call('HSET', job, 'state', 'failed', 'finished', at, 'error_code', 'worker_lost', 'error_message', msg)
    strip_inputs(job)
    fail_with_end(job, ev, 'worker_lost', msg, maxlen)
    retire(job)
    redis.call('ZADD', dead, tonumber(at), id)
    expire(ttl, job, ev)
    ack(qstream, entry); return {-1}
  end
  local fence = redis.call('HINCRBY', job, 'fence', 1)
  redis.call('HSET', job, 'attempt', attempt, 'state', 'running', 'worker', label, 'started', at,
    'step', 0, 'handback', 0, 'control', '', 'consumer', consumer)
  if state == 'running' or handback then
    local reason = 'worker_lost'
    if handback then reason = 'handed_back' end
    append(job, ev, 'retrying', cjson.encode({attempt = attempt, reason = reason}), maxlen)
  end
  append(job, ev, 'started', cjson.encode({attempt = attempt, worker = label}), maxlen)
  fair_started(job)
  return {1, fence, attempt}
end

"""

# KEYS: job, ev, queued, queued_model, qstream, jobs, models
# ARGV: job_id, spec_json, owner, model, created, max_queue, total, maxlen, max_results, batch_key, priority
# Every command is O(1) or O(log N) in the queue's depth, so a deep queue does not slow it; the
# position costs O(owners waiting at the job's priority) (fair.py), and a job that goes ahead of
# others tells the watched ones their new place (O(watched x owners)).
SUBMIT = _PRELUDE + """
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return -1 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', 0, 'fence', 0, 'seq', 0, 'spec', ARGV[2],
  'owner', ARGV[3], 'model', ARGV[4], 'created', ARGV[5], 'step', 0, 'total', ARGV[7], 'handback', 0,
  'control', '', 'keep', ARGV[9], 'bkey', ARGV[10], 'prio', ARGV[11])
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

# KEYS: job, ev, pv, qstream, queued, queued_model, dead
# ARGV: entry, consumer, max_attempts, job_id, maxlen, ttl, worker_label, fresh (1: read with '>'), prefix
# -> {1, fence, attempt, job_id, entry} claimed | {0} skip (gone, finished, cancelled, stale entry)
#    | {-1} dead-lettered
# The entry read is a ticket (fair.py): a queued job's ticket starts the head of the claim order, which
# may be another job (its id and entry are returned); a running job's (lost by its worker, found by
# XAUTOCLAIM) is that job's retry. O(log N) in the queue's depth: no other queued job is read or
# written but the one taken (positions are computed when asked, and pushed by POSITIONS only to the
# few that somebody watches).
CLAIM = _PRELUDE + """
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'completed' or state == 'failed' or state == 'cancelled' then
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

# KEYS: queued_model, qstream, queued, dead
# ARGV: prefix, batch_key, limit, window, consumer, max_attempts, maxlen, ttl, worker_label, model
# -> {job_id, entry, fence, attempt, ...} for each partner taken
# Batch partners for a job just claimed: among the first ``window`` waiting jobs of the model in the
# claim order (fair.py: a constant, so this is O(log N) whatever the depth), the ones with the same
# batch key, in that order. Their stream entries have not been delivered yet: XCLAIM FORCE makes them pending on this
# worker, so a worker that dies with a batch loses none of it (XAUTOCLAIM hands each job on). A job
# that does not fit is left where it is, for the next idle worker.
PARTNERS = _PRELUDE + """
local taken = {}
if ARGV[2] == '' then return taken end
local ids = fair_head(ARGV[1], ARGV[10], tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  if #taken >= 4 * tonumber(ARGV[3]) then break end
  local job = ARGV[1] .. ':job:' .. id
  local entry = redis.call('HGET', job, 'entry')
  local attempt = tonumber(redis.call('HGET', job, 'attempt') or '0') + 1
  if entry and redis.call('HGET', job, 'state') == 'queued' and redis.call('HGET', job, 'bkey') == ARGV[2]
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

# KEYS: job, ev, pv   ARGV: fence, kind, data_json, step, total, maxlen, image (previews only)
PUBLISH = _PRELUDE + """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'running' and state ~= 'cancelling') or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
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

# KEYS: job, ev, pv, qstream, img_0..img_n-1
# ARGV: fence, outcome, data_json, ttl, maxlen, seeds_json, width, height, code, message, end_json,
#       image_0..image_n-1
FINISH = _PRELUDE + """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'running' and state ~= 'cancelling') or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return 0
end
if state == 'cancelling' and ARGV[2] == 'completed' then
  -- The cancel was asked before this result was stored (e.g. while the worker flushed its outbox):
  -- the cancel wins, as in every store.
  cancel_now(KEYS[1], KEYS[2], ARGV[5])
  expire(ARGV[4], KEYS[1], KEYS[2], KEYS[3])
  ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
  return 0
end
if state == 'cancelling' and ARGV[2] == 'cancelled' and redis.call('HGET', KEYS[1], 'cancel_code') then
  -- The worker stopped a job the fleet cancelled (its deadline passed): it ends with that code.
  local seq = cancel_now(KEYS[1], KEYS[2], ARGV[5])
  expire(ARGV[4], KEYS[1], KEYS[2], KEYS[3])
  ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
  return seq
end
strip_inputs(KEYS[1])
local n = #KEYS - 4
for i = 1, n do redis.call('SET', KEYS[4 + i], ARGV[11 + i], 'PX', ARGV[4]) end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished', at, 'images', n)
local seq
if ARGV[2] == 'completed' then
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

# KEYS: job, ev, pv, qstream, queued, queued_model   ARGV: mode (cancel|interrupt), job_id, ttl, maxlen, channel
# -> the state after the call, or false for an unknown job
CANCEL = _PRELUDE + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
  fair_remove(KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  cancel_now(KEYS[1], KEYS[2], ARGV[4])
  expire(ARGV[3], KEYS[1], KEYS[2], KEYS[3])
  return 'cancelled'
end
if state == 'running' or state == 'cancelling' then
  if ARGV[1] == 'interrupt' and state == 'running' then
    redis.call('HSET', KEYS[1], 'control', 'interrupt')
  else
    redis.call('HSET', KEYS[1], 'control', 'cancel', 'state', 'cancelling')
    state = 'cancelling'
  end
  redis.call('PUBLISH', ARGV[5], ARGV[2] .. ' ' .. ARGV[1])
end
return state
"""

# KEYS: job, ev, pv, qstream, queued, queued_model   ARGV: job_id, cutoff, ttl, maxlen, message
# A job still queued since before ``cutoff`` for a model no live worker serves ends failed with
# ``no_worker`` and leaves the queue (its --max-queue place is free again). -> 1 ended | 0 not (any more)
NO_WORKER = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'created')) > tonumber(ARGV[2]) then return 0 end
ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
fair_remove(KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'failed', 'finished', at, 'error_code', 'no_worker', 'error_message', ARGV[5])
strip_inputs(KEYS[1])
fail_with_end(KEYS[1], KEYS[2], 'no_worker', ARGV[5], ARGV[4])
retire(KEYS[1])
expire(ARGV[3], KEYS[1], KEYS[2], KEYS[3])
return 1
"""

# KEYS: watched (P:watchq:{model})   ARGV: prefix, maxlen
# After the queue moved (a claim, a cancel): new positions to the watched queued jobs (push_positions).
POSITIONS = _PRELUDE + """
return push_positions(ARGV[1], KEYS[1], ARGV[2])
"""

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

# KEYS: job, qstream, watchers   ARGV: fence, entry, consumer
# -> {1, control, watchers} while the lease holds | {0} lost
HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return {0} end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'cancelling' then return {0} end
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

# KEYS: job, qstream, queued, queued_model, ev, pv   ARGV: fence, job_id, ttl, maxlen
# Hand a running job back to the queue now (SIGTERM): not an attempt; the fence moves on. A job being
# cancelled is cancelled instead: nobody else would ever finish its cancel.
RELEASE = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'cancelling' then
  cancel_now(KEYS[1], KEYS[5], ARGV[4])
  expire(ARGV[3], KEYS[1], KEYS[5], KEYS[6])
  ack(KEYS[2], redis.call('HGET', KEYS[1], 'entry'))
  return 2
end
if state ~= 'running' then return 0 end
local old = redis.call('HGET', KEYS[1], 'entry')
redis.call('XACK', KEYS[2], 'workers', old)
redis.call('XDEL', KEYS[2], old)
local entry = redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HINCRBY', KEYS[1], 'attempt', -1)  -- a hand-back is not an attempt
redis.call('HSET', KEYS[1], 'entry', entry, 'state', 'queued', 'handback', 1, 'worker', '', 'step', 0)
local created = tonumber(redis.call('HGET', KEYS[1], 'created'))
redis.call('ZADD', KEYS[3], created, ARGV[2])
redis.call('ZADD', KEYS[4], created, ARGV[2])
fair_front(KEYS[1], ARGV[2], at)
return 1
"""

# KEYS: job, ev, pv, qstream, queued, queued_model, deadlines
# ARGV: job_id, ttl, maxlen, channel, message
# A job past its deadline: a queued one ends now, a running one is cancelled like a client's cancel (the
# worker hears it on the channel) and ends with the code when the worker reports it stopped (FINISH).
# -> the state after the call, or false for a job that is gone or already finished
DEADLINE = _PRELUDE + """
redis.call('ZREM', KEYS[7], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'completed' or state == 'failed' or state == 'cancelled' then return false end
redis.call('HSET', KEYS[1], 'cancel_code', 'deadline_exceeded', 'cancel_message', ARGV[5])
if state == 'queued' then
  ack(KEYS[4], redis.call('HGET', KEYS[1], 'entry'))
  fair_remove(KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  cancel_now(KEYS[1], KEYS[2], ARGV[3])
  expire(ARGV[2], KEYS[1], KEYS[2], KEYS[3])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'control', 'cancel', 'state', 'cancelling')
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' cancel')
return 'cancelling'
"""
