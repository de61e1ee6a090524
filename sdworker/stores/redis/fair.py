"""The fleet's claim order, in Lua: the same rule as the one-process queue (``jobs/queue.py``).

Handed-back jobs first (newest first, as ``put_front``); then each ``priority``, highest first; within
a priority, round-robin by owner: the oldest queued job of the owner whose last job *started* least
recently (an owner that never started one comes first, such owners by their oldest job).

The structure, per model (``P:fair:{model}...``), is built so that a claim never reads the queue:

- ``:front`` (sorted set): handed-back jobs, scored by minus their hand-back time;
- ``:levels`` (sorted set): the priorities that have queued jobs, scored by minus the priority;
- ``:depth`` (hash): priority -> how many jobs wait at it (a position adds the higher levels up);
- ``:p{priority}`` (sorted set): the owners with jobs waiting at that priority, scored by their last
  start number, or, never started, by their oldest job's submit number minus ``FAR``;
- ``:p{priority}:{owner}`` (sorted set): that owner's jobs at that priority, by submit number;
- ``:n{priority}`` (hash): owner -> how many jobs it has waiting at that priority (positions);
- ``:started`` (hash) and ``:starts`` (counter): each owner's last start number.

The next job is three ``ZRANGE 0 0`` (front, else top level, its first owner, that owner's oldest):
O(log n). A start moves its owner to the back of each level it waits in (one ``ZADD XX`` per level,
and levels are few: priorities are 0..100). A position is computed when asked (``fair_position``),
never stored for the whole queue: O(levels + log n) for a job that is its owner's next, else one
``HGETALL`` of its level's owner counts and a ``ZRANGE`` of the owners before its own, O(owners at
its priority) inside Redis but two calls, not one per owner.

Submit numbers (``P:qseq``) order jobs exactly as they were accepted, where creation times can tie.
Each job's hash keeps ``prio`` and ``qseq``, so every script that takes a job out of the queue
(claim, cancel, deadline, no_worker) finds its place from the job alone (``fair_remove``).

The stream entries of ``P:q:{model}`` stay what wakes workers and what tracks a job held by a worker
(pending entries, ``XAUTOCLAIM``): an entry is a ticket. A worker that reads any ticket starts the
head of this order; if that is another job, the worker takes over that job's own entry (``XCLAIM``)
and the job it read gets a fresh ticket, so every queued job still has exactly one entry.
"""

from __future__ import annotations

# Lua helpers, prepended to the scripts that change or read the queue (scripts._PRELUDE, POSITION).
# They need nothing from the caller but the job's key (``<prefix>:job:<id>``) and id.
FAIR_LUA = """
local FAR = 1e15  -- below every start number: owners that never started come first
local function fair_base(job)
  local prefix = string.match(job, '^(.*):job:[^:]+$')
  local model, owner, level = unpack(redis.call('HMGET', job, 'model', 'owner', 'prio'))
  if not (prefix and model) then return nil end
  return prefix, prefix .. ':fair:' .. model, owner or '', level
end
local function fair_add(job, id)
  -- A job enters the queue at its priority, behind its owner's older jobs there.
  local prefix, f, owner, level = fair_base(job)
  if not (f and level) then return end
  local seq = redis.call('INCR', prefix .. ':qseq')
  redis.call('HSET', job, 'qseq', seq)
  local owners = f .. ':p' .. level
  redis.call('ZADD', owners .. ':' .. owner, seq, id)
  if not redis.call('ZSCORE', owners, owner) then
    local last = redis.call('HGET', f .. ':started', owner)
    redis.call('ZADD', owners, last and tonumber(last) or (seq - FAR), owner)
  end
  redis.call('ZADD', f .. ':levels', -tonumber(level), level)
  redis.call('HINCRBY', f .. ':depth', level, 1)
  redis.call('HINCRBY', f .. ':n' .. level, owner, 1)
end
local function fair_front(job, id, at)
  -- A handed-back job goes before every other (the latest hand-back first, as put_front).
  local _, f = fair_base(job)
  if f then redis.call('ZADD', f .. ':front', -tonumber(at), id) end
end
local function fair_remove(job, id)
  -- The job leaves the queue (started, cancelled, expired): its owner keeps its place by last start,
  -- or, never started, moves to its next oldest job's.
  local _, f, owner, level = fair_base(job)
  if not f then return end
  redis.call('ZREM', f .. ':front', id)
  if not level then return end
  local owners = f .. ':p' .. level
  local jobs = owners .. ':' .. owner
  if redis.call('ZREM', jobs, id) == 0 then return end
  if redis.call('HINCRBY', f .. ':depth', level, -1) <= 0 then
    redis.call('HDEL', f .. ':depth', level)
    redis.call('ZREM', f .. ':levels', level)
  end
  if redis.call('HINCRBY', f .. ':n' .. level, owner, -1) <= 0 then redis.call('HDEL', f .. ':n' .. level, owner) end
  local head = redis.call('ZRANGE', jobs, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', owners, owner)
  elseif redis.call('HEXISTS', f .. ':started', owner) == 0 then
    redis.call('ZADD', owners, tonumber(head[2]) - FAR, owner)
  end
end
local function fair_started(job)
  -- The job's owner has the latest start now: behind every other owner, at every level it waits in.
  local _, f, owner = fair_base(job)
  if not f then return end
  local n = redis.call('INCR', f .. ':starts')
  redis.call('HSET', f .. ':started', owner, n)
  for _, level in ipairs(redis.call('ZRANGE', f .. ':levels', 0, -1)) do
    redis.call('ZADD', f .. ':p' .. level, 'XX', n, owner)
  end
end
local function fair_head(prefix, model, count)
  -- The first ``count`` queued jobs in start order. Round r of a level holds the r-th job of each of
  -- its owners, so the first ``count`` jobs come from its first ``count`` owners' first ``count`` jobs:
  -- O(count^2) reads, whatever the depth.
  local f = prefix .. ':fair:' .. model
  local ids = redis.call('ZRANGE', f .. ':front', 0, count - 1)
  for _, level in ipairs(redis.call('ZRANGE', f .. ':levels', 0, -1)) do
    local need = count - #ids
    if need <= 0 then break end
    local owners = f .. ':p' .. level
    local queues = {}
    for i, owner in ipairs(redis.call('ZRANGE', owners, 0, need - 1)) do
      queues[i] = redis.call('ZRANGE', owners .. ':' .. owner, 0, need - 1)
    end
    for round = 1, need do
      for _, queue in ipairs(queues) do
        if queue[round] and #ids < count then table.insert(ids, queue[round]) end
      end
      if #ids >= count then break end
    end
  end
  return ids
end
local function fair_position(job, id)
  -- 1 = next. The handed-back jobs, every job at a higher priority, then this level's round-robin:
  -- each owner's jobs in the rounds before this job's, and this round's owners before its own.
  local _, f, owner, level = fair_base(job)
  if not f then return false end
  local front = redis.call('ZRANK', f .. ':front', id)
  if front then return front + 1 end
  if not level then return false end
  local owners = f .. ':p' .. level
  local round = redis.call('ZRANK', owners .. ':' .. owner, id)
  local mine = redis.call('ZRANK', owners, owner)
  if not (round and mine) then return false end
  local position = redis.call('ZCARD', f .. ':front') + 1
  for _, higher in ipairs(redis.call('ZRANGEBYSCORE', f .. ':levels', '-inf', '(' .. -tonumber(level))) do
    position = position + tonumber(redis.call('HGET', f .. ':depth', higher) or '0')
  end
  if round == 0 then return position + mine end  -- its owner's next: the owners before it, one each
  local counts = redis.call('HGETALL', f .. ':n' .. level)
  local waiting = {}
  for i = 1, #counts, 2 do
    waiting[counts[i]] = tonumber(counts[i + 1])
    position = position + math.min(waiting[counts[i]], round)
  end
  if mine > 0 then  -- (ZRANGE 0 -1 would be every owner)
    for _, other in ipairs(redis.call('ZRANGE', owners, 0, mine - 1)) do
      if (waiting[other] or 0) > round then position = position + 1 end
    end
  end
  return position
end
"""

# KEYS: job   ARGV: job_id   -> the job's queue position (1 = next), or false when it is not queued
POSITION = FAIR_LUA + """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return false end
return fair_position(KEYS[1], ARGV[1])
"""
