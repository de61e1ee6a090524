"""The event bus: one channel per job, fan-out to any number of watchers, bounded replay history.

Concurrency: every method runs on the event loop thread except ``watcher_count``, which the GPU
thread reads to skip preview decoding when nobody watches (a dict lookup of an int, safe under the
GIL). Publishers on other threads hand events over with ``loop.call_soon_threadsafe``; the bus never
blocks and never waits on a watcher, so a slow client cannot slow generation.

History (for late watchers and ``Last-Event-ID``) keeps every event except that only the LATEST
preview keeps its image: an older preview is rewritten to the progress event of its step with the
same sequence number, so replay after any id gives exactly the ids that followed it, holding one
image at most.

Each watcher has a bounded buffer. When it lags, progress and preview events are coalesced (the
oldest dropped first, and an unread preview loses its image to a newer one); queued, started,
terminal and end events are never dropped.

A job's channel closes in two steps: after the terminal event (complete/error) it accepts only the
end event (``JobEnded``, rbee's completion marker; any late step or preview is dropped); after the end
event it is finished: nothing more is recorded, every stream ends once it has delivered it, and a
watcher whose ``Last-Event-ID`` is the end event's id gets nothing (the route answers 204).

Both job backends fan out through this bus: the memory backend publishes into it (the bus numbers
the events); the Redis backend's per-node reader ``accept``s events numbered in Redis, so a thousand
watchers of one job on one node cost one Redis reader. A watcher that has had events waiting for ``stall_seconds``
without taking any is disconnected (its stream ends) so it cannot pin memory forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable

from sdworker.events.types import (
    COALESCIBLE_EVENTS,
    JobEvent,
    PreviewReady,
    StepProgressed,
    StreamNotice,
    ends_stream,
    is_terminal,
    without_image,
)

Clock = Callable[[], float]


class Subscription:
    """One watcher's view of one job: the replay first, then live events, then the end (None)."""

    def __init__(self, bus: EventBus, job_id: str, replay: list[JobEvent], *, max_buffer: int, finished: bool,
                 counted: bool = True) -> None:
        self.job_id = job_id
        self.counted = counted  # a watcher who sees previews (not a synchronous call waiting for the end)
        self._bus = bus
        self._pending: deque[JobEvent] = deque(replay)
        # Replay is never trimmed: the limit leaves room for it plus max_buffer live events.
        self._limit = max_buffer + len(replay)
        self._wakeup = asyncio.Event()
        self._ended = finished  # no more events will be pushed
        self.stalled = False
        self._waiting_since = bus.clock() if replay else 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def next(self, timeout: float) -> JobEvent | None:
        """The next event; None when the stream is over. Raises ``TimeoutError`` after ``timeout``
        seconds without one (the caller sends a keep-alive and asks again)."""
        while not self._pending:
            if self._ended:
                return None
            self._wakeup.clear()
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        event = self._pending.popleft()
        self._waiting_since = self._bus.clock() if self._pending else 0.0
        if ends_stream(event):
            self._pending.clear()
            self._ended = True
        return event

    def ready(self, limit: int) -> list[JobEvent]:
        """Up to ``limit`` more events already waiting, without waiting (after ``next``: a stream
        writes them in one send; the terminal event and ``end`` are published in one loop turn)."""
        taken: list[JobEvent] = []
        while self._pending and len(taken) < limit:
            event = self._pending.popleft()
            taken.append(event)
            if ends_stream(event):
                self._pending.clear()
                self._ended = True
                break
        self._waiting_since = self._bus.clock() if self._pending else 0.0
        return taken

    def close(self) -> None:
        """The watcher went away (or was dropped): leave the channel. Idempotent."""
        self._ended = True
        self._pending.clear()
        self._bus._unsubscribe(self)
        self._wakeup.set()

    def _end(self) -> None:
        """No more events will come; what is buffered is still delivered."""
        self._ended = True
        self._wakeup.set()

    def _is_stalled(self, now: float, stall_seconds: float) -> bool:
        return bool(self._pending) and now - self._waiting_since > stall_seconds

    def _push(self, event: JobEvent) -> None:
        if not self._pending:
            self._waiting_since = self._bus.clock()
        if isinstance(event, PreviewReady):
            self._strip_older_preview()
        self._pending.append(event)
        if len(self._pending) > self._limit:
            self._drop_oldest_coalescible()
        self._wakeup.set()

    def _strip_older_preview(self) -> None:
        for index in range(len(self._pending) - 1, -1, -1):
            old = self._pending[index]
            if isinstance(old, PreviewReady):
                self._pending[index] = without_image(old)
                return

    def _drop_oldest_coalescible(self) -> None:
        for index, old in enumerate(self._pending):
            if isinstance(old, COALESCIBLE_EVENTS):
                del self._pending[index]
                return


class _Channel:
    __slots__ = ("counted", "decided", "finished", "history", "last_seq", "preview_index", "subscribers")

    def __init__(self) -> None:
        self.history: list[JobEvent] = []
        self.preview_index: int | None = None
        self.subscribers: set[Subscription] = set()
        # How many subscribers are ``counted`` (kept, not recounted: a thousand watchers arriving or
        # leaving at once would cost a million steps, right when the terminal event goes out).
        self.counted = 0
        self.last_seq = 0
        self.decided = False  # the terminal event is recorded: only the end event may follow
        self.finished = False  # the end event is recorded: the stream is over

    def takes(self, event: JobEvent) -> bool:
        return not self.finished and (not self.decided or ends_stream(event))

    def close_after(self, event: JobEvent) -> None:
        if is_terminal(event):
            self.decided = True
        elif ends_stream(event):
            self.finished = True


class EventBus:
    def __init__(
        self,
        *,
        max_buffer: int = 64,
        stall_seconds: float = 30.0,
        history_limit: int = 2048,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.max_buffer = max_buffer
        self.stall_seconds = stall_seconds
        self.history_limit = history_limit
        self.clock = clock
        self._wall_clock = wall_clock
        self._channels: dict[str, _Channel] = {}
        # Read from the GPU thread: plain ints, replaced (never mutated in place) on the loop thread.
        self._watchers: dict[str, int] = {}

    def open(self, job_id: str) -> None:
        self._channels.setdefault(job_id, _Channel())

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscriber_count(self, job_id: str) -> int:
        channel = self._channels.get(job_id)
        return channel.counted if channel is not None else 0

    def publish(self, event: JobEvent) -> JobEvent | None:
        """Stamp ``seq`` and ``at``, record in history, fan out. Returns the stamped event, or None if
        the job is unknown or already finished (a late event after the terminal one is dropped; only the
        end event may follow it)."""
        channel = self._channels.get(event.job_id)
        if channel is None or not channel.takes(event):
            return None
        channel.last_seq += 1
        stamped = dataclasses.replace(event, seq=channel.last_seq, at=self._wall_clock())
        self._record(channel, stamped)
        self._fan_out(channel, stamped)
        channel.close_after(stamped)
        return stamped

    def _fan_out(self, channel: _Channel, event: JobEvent) -> None:
        now = self.clock()
        for sub in list(channel.subscribers):
            if sub._is_stalled(now, self.stall_seconds):
                self._drop(sub)
            else:
                sub._push(event)

    def accept(self, event: JobEvent) -> JobEvent | None:
        """Record and fan out an event whose ``seq`` was stamped elsewhere (the Redis backend numbers
        events in Redis, so every API node shows the same ids). Events at or below the channel's last
        seq are duplicates and dropped; gaps are allowed (a trimmed history)."""
        channel = self._channels.get(event.job_id)
        if channel is None or not channel.takes(event) or event.seq <= channel.last_seq:
            return None
        channel.last_seq = event.seq
        self._record(channel, event)
        self._fan_out(channel, event)
        channel.close_after(event)
        return event

    def notify(self, job_id: str, event: JobEvent) -> None:
        """Push a transient event (``seq`` 0: no SSE id) to the job's current watchers only; it is not
        recorded, so no replay ever repeats it."""
        channel = self._channels.get(job_id)
        if channel is not None:
            for sub in list(channel.subscribers):
                sub._push(event)

    def subscribe(self, job_id: str, after_seq: int = 0, *, counted: bool = True) -> Subscription:
        """A watcher that first gets every recorded event with ``seq > after_seq``, then live ones.
        ``counted`` False: a caller waiting only for the outcome (the OpenAI and A1111 doors), which
        is no reason to decode previews, so it is left out of ``watcher_count``. Raises KeyError for an
        unknown job."""
        channel = self._channels[job_id]
        replay = [e for e in channel.history if e.seq > after_seq]
        sub = Subscription(self, job_id, replay, max_buffer=self.max_buffer, finished=channel.finished,
                           counted=counted)
        if not channel.finished:
            channel.subscribers.add(sub)
            channel.counted += counted
            self._watchers[job_id] = channel.counted
        return sub

    def last_seq(self, job_id: str) -> int:
        return self._channels[job_id].last_seq

    def is_finished(self, job_id: str) -> bool:
        return self._channels[job_id].finished

    def knows(self, job_id: str) -> bool:
        return job_id in self._channels

    def watcher_count(self, job_id: str) -> int:
        """Safe to call from any thread."""
        return self._watchers.get(job_id, 0)

    def total_watchers(self) -> int:
        return sum(len(c.subscribers) for c in self._channels.values())

    def forget(self, job_id: str) -> None:
        channel = self._channels.pop(job_id, None)
        self._watchers.pop(job_id, None)
        if channel is not None:
            for sub in list(channel.subscribers):
                sub._end()

    def close_all(self, notice: StreamNotice | None = None) -> None:
        """End every stream after what it has buffered (shutdown). ``notice``: the last thing a
        stream of a job without its terminal event gets (its job goes on after this process: the
        client should reconnect with its Last-Event-ID), so no stream just stops unexplained."""
        for job_id, channel in self._channels.items():
            for sub in list(channel.subscribers):
                if notice is not None and not channel.decided:
                    sub._push(dataclasses.replace(notice, job_id=job_id))
                sub._end()
            channel.subscribers.clear()
            channel.counted = 0
        self._watchers.clear()

    def sweep(self) -> int:
        """Disconnect watchers that stalled while no new event arrived to notice it. Returns how many."""
        now = self.clock()
        stalled = [
            sub for c in self._channels.values() for sub in c.subscribers if sub._is_stalled(now, self.stall_seconds)
        ]
        for sub in stalled:
            self._drop(sub)
        return len(stalled)

    def _drop(self, sub: Subscription) -> None:
        sub.stalled = True
        sub.close()

    def _unsubscribe(self, sub: Subscription) -> None:
        channel = self._channels.get(sub.job_id)
        if channel is not None and sub in channel.subscribers:
            channel.subscribers.discard(sub)
            channel.counted -= sub.counted
            self._watchers[sub.job_id] = channel.counted

    def _record(self, channel: _Channel, event: JobEvent) -> None:
        history = channel.history
        if isinstance(event, PreviewReady):
            if channel.preview_index is not None:
                old = history[channel.preview_index]
                assert isinstance(old, PreviewReady)
                history[channel.preview_index] = without_image(old)
            channel.preview_index = len(history)
        history.append(event)
        if len(history) > self.history_limit:
            # Only a pathological job gets here (limits cap steps); trim the oldest progress.
            for index, old in enumerate(history):
                if isinstance(old, StepProgressed):
                    del history[index]
                    if channel.preview_index is not None and channel.preview_index > index:
                        channel.preview_index -= 1
                    break

