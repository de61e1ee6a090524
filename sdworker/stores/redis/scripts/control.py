"""The scripts that ask a job to stop: a client's cancel or interrupt, and a passed deadline. The table
(``prelude.RULES``) says whether the job ends now (queued) or its worker is signalled (running)."""

from __future__ import annotations

from sdworker.stores.redis.scripts.prelude import PRELUDE

# The Lua both scripts share: apply a stop transition ``t`` to the job (a queued one leaves the queue
# and ends; a running one is signalled on the control channel). -> the state after it
_STOP = (
    PRELUDE
    + """
local function stop(t, id, ttl, maxlen, channel)
  if t.effects.finish then
    leave_queue(KEYS[1], id, KEYS[4], KEYS[5], KEYS[6])
    cancel_now(KEYS[1], KEYS[2], maxlen)
    expire(ttl, KEYS[1], KEYS[2], KEYS[3])
    return t.to
  end
  local signal = 'cancel'
  if t.effects.signal_interrupt then signal = 'interrupt' end
  redis.call('HSET', KEYS[1], 'control', signal, 'state', t.to)
  redis.call('PUBLISH', channel, id .. ' ' .. signal)
  return t.to
end
"""
)

# KEYS: job, ev, pv, qstream, queued, queued_model   ARGV: mode (cancel|interrupt), job_id, ttl, maxlen, channel
# -> the state after the call, or false for an unknown job
CANCEL = (
    _STOP
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local action = 'client_cancel'
if ARGV[1] == 'interrupt' then action = 'interrupt' end
local t = rule(state, action)
if not t then return state end
return stop(t, ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# KEYS: job, ev, pv, qstream, queued, queued_model, deadlines
# ARGV: job_id, ttl, maxlen, channel, message
# A job past its deadline: a queued one ends now, a running one is cancelled like a client's cancel (the
# worker hears it on the channel) and ends with the code when the worker reports it stopped (FINISH).
# -> the state after the call, or false for a job that is gone or already finished
DEADLINE = (
    _STOP
    + """
redis.call('ZREM', KEYS[7], ARGV[1])
local t = rule(redis.call('HGET', KEYS[1], 'state'), 'deadline')
if not t then return false end
redis.call('HSET', KEYS[1], 'cancel_code', 'deadline_exceeded', 'cancel_message', ARGV[5])
return stop(t, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)
