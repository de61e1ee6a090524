"""The transition table (``jobs/transitions.py``) against every store: for each action, a job is brought
into each state on the memory store, a real SQLite file and a real redis-server, the action is applied
through the protocols the runner and the API use, and the store's outcome must be the table's. Then
the Redis-only parts of the table (no worker, a lost worker, the dead letters) and SQLite's restart,
and the two Redis rules that once drifted from the others: a finished job keeps none of its input
images, and results are bounded in bytes as well as count."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from sdworker.domain.request import ControlUnit, InputImage, IpAdapterRef, Operation
from sdworker.engine.fake import FakeEngine
from sdworker.errors import InputsDropped, JobNotFound
from sdworker.events.types import StepProgressed
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.protocol import Lease
from sdworker.jobs.service import LocalJobService
from sdworker.jobs.state import JobStatus
from sdworker.jobs.transitions import RULES, Action, Effect, rule, rules_json
from sdworker.settings import Settings
from sdworker.stores.redis.scripts import prelude
from sdworker.stores.redis.service import RedisJobService
from sdworker.stores.redis.source import RedisJobSource
from sdworker.stores.sqlite import SqliteStore
from tests.redis_server import RedisServer
from tests.stores.test_conformance import STORES, Stores, _eventually, _gone, draft, open_stores, png

STATES = list(JobStatus)
# What every store does through JobService/Lease; the rest of the table is driven further down.
COMMON = [
    Action.CLAIM,
    Action.PUBLISH,
    Action.COMPLETE,
    Action.FAIL,
    Action.CANCEL,
    Action.CLIENT_CANCEL,
    Action.INTERRUPT,
    Action.RELEASE,
    Action.DEADLINE,
]
OUTCOME = {Action.COMPLETE: JobStatus.COMPLETED, Action.FAIL: JobStatus.FAILED, Action.CANCEL: JobStatus.CANCELLED}


def test_the_lua_prelude_carries_the_python_table() -> None:
    assert f"cjson.decode('{rules_json()}')" in prelude.PRELUDE
    decoded = json.loads(rules_json())
    for state, actions in RULES.items():
        for action, transition in actions.items():
            entry = decoded[state.value][action.value]
            assert entry["to"] == transition.to.value
            assert set(entry["effects"]) == {effect.value for effect in transition.effects}
    assert not any(state.finished for state in RULES)  # a finished job never changes


async def bring(stores: Stores, state: JobStatus) -> tuple[str, Lease]:
    """A new job in ``state``, and the lease that ran it (stale once the job is back in the queue)."""
    job_id = (await stores.service.submit(draft())).job_id
    lease = await stores.claim_one()
    assert lease.spec.job_id == job_id
    if state is JobStatus.QUEUED:
        await lease.release()
    elif state in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        await stores.service.cancel(job_id)
        await _eventually(lambda: lease.control.cancelled)
        if state is JobStatus.CANCELLED:
            assert await lease.fail("cancelled", "the job was cancelled", cancelled=True)
    elif state is JobStatus.COMPLETED:
        assert await lease.complete((png(1),), (3,), 64, 64)
    elif state is JobStatus.FAILED:
        assert await lease.fail("boom", "it broke")
    assert await stores.status(job_id) is state
    return job_id, lease


async def settle(stores: Stores, job_id: str, lease: Lease) -> None:
    """End the job, so the next case's claim takes the next case's job."""
    view = await stores.service.get(job_id)
    if view.status is JobStatus.QUEUED or view.status is JobStatus.RUNNING:
        view = await stores.service.cancel(job_id)
    if view.status is JobStatus.CANCELLING:
        await _eventually(lambda: lease.control.cancelled)
        await lease.fail("cancelled", "the job was cancelled", cancelled=True)
    assert (await stores.service.get(job_id)).status.finished


async def apply(stores: Stores, action: Action, job_id: str, lease: Lease) -> tuple[Lease, bool | None]:
    """Do ``action`` to the job as the runner or the API would; the lease that holds it after, and
    what the call answered where it answers (a finisher's bool)."""
    if action is Action.CLAIM:
        leases = await stores.source.claim(stores.models, wait_seconds=0.3)
        ours = [held for held in leases if held.spec.job_id == job_id]
        assert len(ours) == len(leases), "a claim took another job"
        return (ours[0] if ours else lease), bool(ours)
    if action is Action.PUBLISH:
        lease.publish(StepProgressed(job_id=job_id, step=1, total=2))
        flush = getattr(lease, "_flush", None)  # Redis writes events from an outbox
        if flush is not None:
            await flush()
        return lease, None
    if action is Action.COMPLETE:
        return lease, await lease.complete((png(2),), (3,), 64, 64)
    if action is Action.FAIL:
        return lease, await lease.fail("boom", "it broke")
    if action is Action.CANCEL:
        return lease, await lease.fail("cancelled", "the job was cancelled", cancelled=True)
    if action is Action.CLIENT_CANCEL:
        await stores.service.cancel(job_id)
    elif action is Action.INTERRUPT:
        await stores.service.interrupt(job_id)
    elif action is Action.RELEASE:
        await lease.release()
    elif action is Action.DEADLINE:
        if isinstance(stores.service, RedisJobService):
            await stores.service.housekeeping.end_past_deadline(job_id)
        else:
            stores.service._deadline_passed(job_id)  # type: ignore[attr-defined]
    return lease, None


@pytest.mark.parametrize("action", COMMON, ids=str)
@pytest.mark.parametrize("store_name", STORES)
async def test_every_store_does_what_the_table_says(
    store_name: str, action: Action, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_stores(store_name, request, tmp_path) as stores:
        for state in STATES:
            job_id, lease = await bring(stores, state)
            before = await stores.service.get(job_id)
            transition = rule(state, action)
            expected = transition.to if transition is not None else state
            held, answer = await apply(stores, action, job_id, lease)
            case = f"{store_name}: {action} of a {state} job"
            after = await stores.until(job_id, expected)
            assert after.status is expected, case
            if action in OUTCOME:  # the worker is told whether its end is the job's end
                assert answer is (transition is not None and transition.to is OUTCOME[action]), case
            if action is Action.CLAIM:
                assert answer is (transition is not None), case
            if action is Action.PUBLISH:  # an accepted step shows; an ignored one does not
                assert after.step == (1 if transition is not None else before.step), case
            effects = transition.effects if transition is not None else frozenset()
            if Effect.SIGNAL_CANCEL in effects:
                await _eventually(lambda held=held: held.control.cancelled)  # type: ignore[misc]
            if Effect.SIGNAL_INTERRUPT in effects:
                await _eventually(lambda held=held: held.control.interrupted)  # type: ignore[misc]
            if Effect.FINISH in effects:
                assert after.finished_at is not None, case
            if transition is None:  # ignored: nothing changed
                assert (after.status, after.finished_at, after.attempt) == (
                    before.status,
                    before.finished_at,
                    before.attempt,
                ), case
            await settle(stores, job_id, held)


# --- the Redis-only part of the table: no worker, a lost worker, the dead letters, a heartbeat -----


def _redis_sides(stores: Stores) -> tuple[RedisJobService, RedisJobSource]:
    assert isinstance(stores.service, RedisJobService) and isinstance(stores.source, RedisJobSource)
    return stores.service, stores.source


async def _lost_claim(source: RedisJobSource, job_id: str, lease: Lease) -> Lease | None:
    """What XAUTOCLAIM hands a live worker once the lease's holder went silent: its entry, taken again."""
    entry = lease._entry  # type: ignore[attr-defined]
    model = FakeEngine().model
    return await source._take(model, entry, {b"job_id": job_id.encode()}, fresh=False)


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["lost", "dead_letter"])
async def test_redis_lost_and_dead_letter_follow_the_table(
    max_attempts: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    action = Action.LOST if max_attempts > 1 else Action.DEAD_LETTER
    async with open_stores("redis", request, tmp_path, max_attempts=max_attempts) as stores:
        service, source = _redis_sides(stores)
        for state in (JobStatus.RUNNING, JobStatus.CANCELLING):
            job_id, lease = await bring(stores, state)
            taken = await _lost_claim(source, job_id, lease)
            transition = rule(state, action)
            assert transition is not None
            expected = transition.to
            if Effect.RETRY in transition.effects:
                # Redis retries at the claim that found the job lost: queued again, and taken at once.
                after_retry = rule(expected, Action.CLAIM)
                assert after_retry is not None and taken is not None and taken.attempt == 2
                expected = after_retry.to
            else:
                assert taken is None
            assert await stores.status(job_id) is expected, f"{action} of a {state} job"
            if transition.to is JobStatus.FAILED:
                assert job_id in [view.job_id for view in await service.dead_letters()]
            await settle(stores, job_id, taken or lease)


async def test_redis_no_worker_and_heartbeat_follow_the_table(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with open_stores("redis", request, tmp_path) as stores:
        service, source = _redis_sides(stores)
        k = source.keys
        for state in STATES:
            job_id, lease = await bring(stores, state)
            beat = await source.heartbeat_script(
                keys=[k.job(job_id), k.queue(FakeEngine().model), k.watchers(job_id)],
                args=[lease._fence, lease._entry, source.consumer],  # type: ignore[attr-defined]
            )
            assert bool(int(beat[0])) is (rule(state, Action.HEARTBEAT) is not None and state is not JobStatus.QUEUED)
            await service.housekeeping.fail_unserved(job_id, FakeEngine().model, time.time() + 60)
            transition = rule(state, Action.NO_WORKER)
            assert await stores.status(job_id) is (transition.to if transition else state), f"no_worker, {state}"
            await settle(stores, job_id, lease)


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["lost", "dead_letter"])
async def test_sqlite_restart_is_lost_and_dead_letter_as_the_table_says(max_attempts: int, tmp_path: Path) -> None:
    """A restart finds the jobs that were running (or being cancelled): lost with their worker."""
    action = Action.LOST if max_attempts > 1 else Action.DEAD_LETTER
    settings = Settings(model=FakeEngine().model, max_attempts=max_attempts)
    folder = tmp_path / "data"
    first = LocalJobService(settings, ServiceMetrics(), store=SqliteStore(folder))
    running = (await first.submit(draft())).job_id
    cancelling = (await first.submit(draft())).job_id
    leases = await first.claim(None, limit=1, wait_seconds=1.0)
    leases += await first.claim(None, limit=1, wait_seconds=1.0)
    assert [lease.spec.job_id for lease in leases] == [running, cancelling]
    await first.cancel(cancelling)
    await first.close()
    first.store.close()
    again = LocalJobService(settings, ServiceMetrics(), store=SqliteStore(folder))
    try:
        for job_id, state in ((running, JobStatus.RUNNING), (cancelling, JobStatus.CANCELLING)):
            transition = rule(state, action)
            assert transition is not None
            assert (await again.get(job_id)).status is transition.to, f"{action} of a {state} job"
    finally:
        await again.close()
        again.store.close()


# --- the two rules Redis once kept apart ----------------------------------------------------------


def _image(color: int, field: str) -> InputImage:
    return InputImage(base64.b64encode(png(color)).decode(), field)


def _raw_values(client: redis.Redis, prefix: str) -> bytes:
    """Every byte Redis holds under the prefix (strings, hashes, streams), as one blob to search."""
    blob = b""
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        if kind == b"string":
            blob += client.get(key) or b""
        elif kind == b"hash":
            blob += b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"stream":
            blob += b"".join(b"".join(k + v for k, v in fields.items()) for _, fields in client.xrange(key))
    return blob


@pytest.mark.parametrize("kind", ["controlnet_and_ip_adapter", "reference_images"])
async def test_a_finished_redis_job_keeps_none_of_its_input_images(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> None:
    fields: dict[str, Any] = (
        {
            "controlnet": (_image(5, "controlnet.0.image"),),
            "ip_adapter": IpAdapterRef("ipa", (_image(6, "ip_adapter.images.0"),)),
        }
        if kind == "controlnet_and_ip_adapter"
        else {"operation": Operation.EDIT, "reference_images": (_image(7, "reference_images.0"),)}
    )
    if "controlnet" in fields:
        fields["controlnet"] = (ControlUnit("cn", fields["controlnet"][0]),)
    inputs = [base64.b64encode(png(color)) for color in (5, 6, 7)]
    client = redis.Redis.from_url(redis_server.url)
    async with open_stores("redis", request, tmp_path) as stores:
        service, _ = _redis_sides(stores)
        prefix = service._keys.prefix
        job_id = (await stores.service.submit(draft(**fields))).job_id
        held = _raw_values(client, prefix)
        assert any(image in held for image in inputs)  # queued: the worker needs them
        lease = await stores.claim_one()
        assert await lease.complete((png(1),), (3,), 64, 64)
        done = await stores.until(job_id, JobStatus.COMPLETED)
        held = _raw_values(client, prefix)
        assert not any(image in held for image in inputs), "an input image stayed in Redis"
        request_done = done.spec.request
        assert [unit.image.data for unit in request_done.controlnet] == [b""] * len(request_done.controlnet)
        assert [image.data for image in request_done.reference_images] == [b""] * len(request_done.reference_images)
        if request_done.ip_adapter is not None:
            assert [image.data for image in request_done.ip_adapter.images] == [b""]
    client.close()


def result(n: int, size: int) -> bytes:
    """A result of exactly ``size`` bytes (the store keeps what the worker gives it)."""
    return png(n) + bytes([n]) * (size - len(png(n)))


async def test_redis_results_are_bounded_in_bytes_and_every_key_goes_with_them(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> None:
    size = 400 * 1024
    # Room for two results' bytes (max_result_bytes is at least 1 MiB), many more by count: the byte
    # bound is the one that acts.
    async with open_stores("redis", request, tmp_path, max_results=100, max_result_bytes=1 << 20) as stores:
        service, _ = _redis_sides(stores)
        prefix = service._keys.prefix
        ids = []
        for n in range(4):
            job_id = (await stores.service.submit(draft(seed=n), idempotency_key=f"key{n}")).job_id
            lease = await stores.claim_one()
            assert await lease.complete((result(n, size),), (n,), 64, 64)
            await stores.until(job_id, JobStatus.COMPLETED)
            ids.append(job_id)
        client = redis.Redis.from_url(redis_server.url)
        try:
            for old in ids[:2]:
                assert await _gone(stores.service, old)
                assert list(client.scan_iter(f"{prefix}:job:{old}*")) == [], "a key of a dropped result stayed"
                for index in ("jobs", "done"):
                    assert client.zscore(f"{prefix}:{index}", old) is None, index
                with pytest.raises(JobNotFound):
                    await stores.service.open_stream(old)
            for n, kept in enumerate(ids[2:], start=2):
                assert await stores.service.image(kept) == result(n, size)
            assert int(client.get(f"{prefix}:done_bytes") or 0) == 2 * size
            again = await stores.service.submit(draft(seed=0), idempotency_key="key0")
            assert again.job_id != ids[0]  # the key went with its job
        finally:
            client.close()


async def test_the_newest_redis_result_is_kept_even_alone_above_the_byte_bound(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    size = 3 << 19  # 1.5 MiB, above the 1 MiB bound alone
    async with open_stores("redis", request, tmp_path, max_result_bytes=1 << 20) as stores:
        ids = []
        for n in range(2):
            job_id = (await stores.service.submit(draft(seed=n))).job_id
            lease = await stores.claim_one()
            assert await lease.complete((result(n, size),), (n,), 64, 64)
            ids.append(job_id)
        assert await _gone(stores.service, ids[0])
        assert await stores.service.image(ids[1]) == result(1, size)


async def test_a_dead_letter_without_its_input_images_is_not_requeued_as_another_job(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A dead letter is a finished job: its input images are gone. Requeued, an img2img job would run
    as text-to-image, so the requeue is a 409 naming the image; a job that had no images requeues."""
    async with open_stores("redis", request, tmp_path, max_attempts=1) as stores:
        service, source = _redis_sides(stores)
        plain = (await service.submit(draft())).job_id
        image = (await service.submit(draft(operation=Operation.IMAGE_TO_IMAGE, init_image=_image(4, "init_image"),
                                            strength=0.5))).job_id
        for job_id in (plain, image):
            lease = await stores.claim_one()
            assert lease.spec.job_id == job_id
            assert await _lost_claim(source, job_id, lease) is None
            assert await stores.status(job_id) is JobStatus.FAILED
        assert {view.job_id for view in await service.dead_letters()} == {plain, image}
        with pytest.raises(InputsDropped) as refused:
            await service.requeue(image)
        assert refused.value.field == "init_image" and refused.value.http_status == 409
        again = await service.requeue(plain)
        assert again.job_id != plain and again.status is JobStatus.QUEUED
        assert {view.job_id for view in await service.dead_letters()} == {image}
        await service.cancel(again.job_id)
