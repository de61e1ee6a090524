"""The Redis backend: any number of API nodes (``RedisJobService``) and GPU workers (``RedisJobSource``)
sharing one Redis. Streams and consumer groups for the queue, Lua scripts for every state change
(attempt fencing, compare-and-set finalisation), one event stream per job for replay.

Key layout (prefix ``sdw`` by default; ``{id}`` is a job id, ``{model}`` a model id):

| key | type | holds |
|---|---|---|
| ``P:q:{model}`` | stream + group ``workers`` | an entry per queued job (a ticket, fair.py) and per running one |
| ``P:queued``, ``P:queued:{model}`` | sorted sets | queued ids by creation (fleet-wide bound; gauges, queue timeout) |
| ``P:fair:{model}:front`` | sorted set | handed-back queued jobs, latest first (fair.py) |
| ``P:fair:{model}:levels``, ``:depth`` | sorted set, hash | priorities with queued jobs; jobs waiting per priority |
| ``P:fair:{model}:p{priority}`` | sorted set | owners with jobs waiting at that priority, by last start |
| ``P:fair:{model}:p{priority}:{owner}`` | sorted set | that owner's jobs waiting at that priority, by submit number |
| ``P:fair:{model}:n{priority}`` | hash | owner -> its jobs waiting at that priority (positions) |
| ``P:fair:{model}:started``, ``:starts`` | hash, counter | each owner's last start number |
| ``P:qseq`` | counter | submit numbers (``qseq`` in the job's hash): the order jobs were accepted |
| ``P:watchq:{model}`` | set | queued jobs somebody watches: told their new position when the queue moves |
| ``P:qmodels`` | set | models jobs were queued for (queue-timeout sweep, per-model gauges) |
| ``P:registered`` | hash | worker id -> its last record, kept 24 h after it stops (scale to zero) |
| ``P:jobs`` | sorted set | every job id by creation time (listing) |
| ``P:job:{id}`` | hash | state, attempt, fence, owner, model, spec JSON, ``done_spec``, times, step, error, bytes |
| ``P:job:{id}:ev`` | stream, ids ``0-<seq>`` | every event but preview images: the replay source |
| ``P:job:{id}:pv`` | hash | the latest preview (its seq and image): replaced, never accumulated |
| ``P:job:{id}:img:{i}`` | string | final PNGs |
| ``P:job:{id}:w`` | hash, short TTL | watchers per API node (workers decode previews only if > 0) |
| ``P:workers`` | hash | worker id -> JSON (rbee's WorkerInfo fields + engine details + last seen) |
| ``P:dead`` | sorted set | jobs that ran out of attempts |
| ``P:done`` | sorted set | finished jobs by end time: retention pops the oldest (scripts/prelude.py: retire) |
| ``P:done_size``, ``P:done_bytes`` | hash, counter | each finished job's result bytes, and their total |
| ``P:deadlines`` | sorted set | jobs with a deadline, by it: API nodes end those past it |
| ``P:owner:{owner}:queued`` | sorted set | an owner's jobs while it has a ``max_queued`` quota |
| ``P:owner:{owner}:rate`` | sorted set, 1 min TTL | an owner's submits of the last minute (``rate``) |
| ``P:wh:jobs`` | sorted set | jobs whose webhooks are not all sent (API nodes relay them) |
| ``P:wh:lease:{id}`` | string, short TTL | the API node sending that job's webhooks now |
| ``P:job:{id}:wh`` | hash | the job's webhook outbox: ``cursor`` (last event seen) and its messages |
| ``P:idem:{owner}:{key}`` | string, TTL | the job an Idempotency-Key made |
| ``P:ctl`` | pub/sub channel | ``<job id> cancel|interrupt``: tells the worker now (the hash is the truth) |

The scripts touch several jobs' keys (positions, batch partners) and shared keys, so this layout targets one Redis
(with AOF, optionally replicas/Sentinel), not Redis Cluster.
"""
