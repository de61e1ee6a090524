"""Every state change of a job in Redis is one Lua script, so it is atomic: nothing can see a job
half-claimed or half-finished, and two workers can never both win. The rules (which transition is
allowed, what it does) are ``jobs/transitions.py``'s table, which every script looks up
(``prelude.py``); the scripts keep the mechanics, by area: the queue (``queue.py``), a worker's lease
(``lease.py``), stopping a job (``control.py``).

Events: each script that appends an event increments the job's ``seq`` and appends with the explicit
stream id ``0-<seq>``, so the SSE ids are the same small integers on every API node and keep
increasing across attempts. Preview images never enter the event stream: a preview event names its
seq and the image lives in the job's ``pv`` hash, replaced by the next one.
"""

from sdworker.stores.redis.scripts.control import CANCEL, DEADLINE
from sdworker.stores.redis.scripts.lease import FINISH, HEARTBEAT, PUBLISH, RELEASE
from sdworker.stores.redis.scripts.queue import CLAIM, NO_WORKER, PARTNERS, POSITIONS, SUBMIT, WATCH

__all__ = [
    "CANCEL",
    "CLAIM",
    "DEADLINE",
    "FINISH",
    "HEARTBEAT",
    "NO_WORKER",
    "PARTNERS",
    "POSITIONS",
    "PUBLISH",
    "RELEASE",
    "SUBMIT",
    "WATCH",
]
