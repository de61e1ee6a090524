"""The Lua every state-changing script starts with: the job's transition table, the event time,
appending events, ending a job, retention and one claim.

``RULES`` is ``jobs/transitions.py``'s table, serialised as JSON when this module is imported and
decoded by the script (``rule(state, action)`` -> ``{to = ..., effects = {...}}`` or nil: ignored).
The scripts decide through it and keep only the mechanics here: keys, fences, streams, the claim order.

Ending a job (``finish_job``) is the one terminal path: the state and its error, the stripped spec
swapped in (``done_spec``, written at submit by ``jobs.transitions.without_inputs``, the only
definition of a finished job's spec), the typed terminal event and rbee's end marker, and retirement.
"""

from __future__ import annotations

from sdworker.jobs.transitions import rules_json
from sdworker.stores.redis.fair import FAIR_LUA

PRELUDE = (
    FAIR_LUA
    + "\nlocal RULES = cjson.decode('"
    + rules_json()
    + """')
local function rule(state, action)
  -- The transition of jobs/transitions.py for a job in ``state`` (false: the job is gone); nil: ignored.
  local actions = state and RULES[state]
  if not actions then return nil end
  return actions[action]
end
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
local function end_marker(job, ev, code, msg, maxlen)
  -- the typed terminal event, then rbee's end marker (events/types.py: end_marker), together
  append(job, ev, 'error', cjson.encode({code = code, message = msg}), maxlen)
  local marker = '[ERROR] ' .. msg
  if code == 'cancelled' then marker = '[CANCELLED]' end
  return append(job, ev, 'end', cjson.encode({marker = marker}), maxlen)
end
local function strip_inputs(job)
  -- A finished job does not need its input images: its spec becomes the one computed at submit by
  -- jobs.transitions.without_inputs (absent when the job had no input images).
  local stripped = redis.call('HGET', job, 'done_spec')
  if stripped then
    redis.call('HSET', job, 'spec', stripped)
    redis.call('HDEL', job, 'done_spec')
  end
end
local function drop_job(prefix, id)
  -- Every key of a job and its place in every index.
  local old = prefix .. ':job:' .. id
  local n = tonumber(redis.call('HGET', old, 'images') or '0')
  for j = 0, n - 1 do redis.call('DEL', old .. ':img:' .. j) end
  redis.call('DEL', old, old .. ':ev', old .. ':pv', old .. ':w')
  redis.call('ZREM', prefix .. ':jobs', id)
  redis.call('ZREM', prefix .. ':done', id)
  redis.call('ZREM', prefix .. ':dead', id)
end
local function retire(job)
  -- A job just finished: it joins <prefix>:done with its result's bytes, and the oldest finished jobs
  -- go at once, with all their keys and their place in every index, while more than 'keep' of them
  -- (max_results at submit) or more than 'keep_bytes' (max_result_bytes) of their images are kept.
  -- The newest is always kept, even alone above the byte bound. An entry whose job expired by its
  -- TTL is older than every live one, so it is popped first and its bytes leave the total with it.
  local prefix, id = string.match(job, '^(.*):job:([^:]+)$')
  local keep = tonumber(redis.call('HGET', job, 'keep') or '0')
  if (not prefix) or keep <= 0 then return end
  local keep_bytes = tonumber(redis.call('HGET', job, 'keep_bytes') or '0')
  if keep_bytes <= 0 then keep_bytes = math.huge end
  local done, sizes, total_key = prefix .. ':done', prefix .. ':done_size', prefix .. ':done_bytes'
  local bytes = tonumber(redis.call('HGET', job, 'bytes') or '0')
  redis.call('ZADD', done, tonumber(at), id)
  redis.call('HSET', sizes, id, bytes)
  local total = redis.call('INCRBY', total_key, bytes)
  local count = redis.call('ZCARD', done)
  while count > 1 and (count > keep or total > keep_bytes) do
    local oldest = redis.call('ZRANGE', done, 0, 0)[1]
    if oldest == id then break end
    local size = tonumber(redis.call('HGET', sizes, oldest) or '0')
    redis.call('HDEL', sizes, oldest)
    total = redis.call('DECRBY', total_key, size)
    drop_job(prefix, oldest)
    count = count - 1
  end
end
local function finish_job(job, ev, state, code, msg, maxlen)
  -- Into a terminal state the table chose, with its error (a failed or cancelled job): the one path.
  redis.call('HSET', job, 'state', state, 'finished', at, 'error_code', code, 'error_message', msg)
  strip_inputs(job)
  local seq = end_marker(job, ev, code, msg, maxlen)
  retire(job)
  return seq
end
local function cancel_now(job, ev, maxlen)
  -- A cancel the fleet asked for itself (DEADLINE) ends with its own code; a client's with 'cancelled'.
  local code = redis.call('HGET', job, 'cancel_code') or 'cancelled'
  local msg = 'the job was cancelled'
  if code ~= 'cancelled' then msg = redis.call('HGET', job, 'cancel_message') or msg end
  return finish_job(job, ev, 'cancelled', code, msg, maxlen)
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
local function leave_queue(job, id, qstream, queued, queued_model)
  ack(qstream, redis.call('HGET', job, 'entry'))
  fair_remove(job, id)
  redis.call('ZREM', queued, id)
  redis.call('ZREM', queued_model, id)
end
local function take(job, ev, pv, qstream, queued, queued_model, dead, entry, consumer, max_attempts, id,
                    maxlen, ttl, label)
  -- One claim of one queued job, or of a running one whose worker was lost (XAUTOCLAIM): the table
  -- says whether it runs (fenced), is retried first, ends cancelled or is dead-lettered. O(1).
  local state = redis.call('HGET', job, 'state')
  local handback = redis.call('HGET', job, 'handback') == '1'
  local attempt = tonumber(redis.call('HGET', job, 'attempt')) + 1
  fair_remove(job, id)
  redis.call('ZREM', queued, id)
  redis.call('ZREM', queued_model, id)
  redis.call('DEL', pv)
  local action = 'claim'
  if state ~= 'queued' then action = 'lost' end
  if attempt > max_attempts then action = 'dead_letter' end
  local t = rule(state, action)
  if not t then ack(qstream, entry); return {0} end
  if t.to == 'cancelled' then
    cancel_now(job, ev, maxlen)
    expire(ttl, job, ev)
    ack(qstream, entry); return {0}
  end
  if t.to == 'failed' then
    local msg = 'the job was lost with its worker ' .. (attempt - 1) .. ' times; it is in the dead-letter list'
    finish_job(job, ev, 'failed', 'worker_lost', msg, maxlen)
    redis.call('ZADD', dead, tonumber(at), id)
    expire(ttl, job, ev)
    ack(qstream, entry); return {-1}
  end
  local reason = false
  if t.effects.retry then
    -- Lost with its worker: queued again as a new attempt, and taken by this claim at once.
    reason = 'worker_lost'
    state = t.to
    t = rule(state, 'claim')
  end
  if handback then reason = 'handed_back' end
  local fence = redis.call('HINCRBY', job, 'fence', 1)
  redis.call('HSET', job, 'attempt', attempt, 'state', t.to, 'worker', label, 'started', at,
    'step', 0, 'handback', 0, 'control', '', 'consumer', consumer)
  if reason then
    append(job, ev, 'retrying', cjson.encode({attempt = attempt, reason = reason}), maxlen)
  end
  append(job, ev, 'started', cjson.encode({attempt = attempt, worker = label}), maxlen)
  fair_started(job)
  return {1, fence, attempt}
end

"""
)
