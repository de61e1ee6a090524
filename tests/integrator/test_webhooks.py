"""Webhooks end to end: the real app (memory and SQLite stores) POSTs to a real HTTP receiver, and every
signature is checked by an independent verifier (the ``standardwebhooks`` package) with the secret
``GET /v1/webhooks/secret`` gave the caller."""

from __future__ import annotations

import asyncio

import pytest

from sdworker.api.views import job_detail
from sdworker.engine.fake import FakeEngine
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.stores.redis.service import RedisJobService
from tests.api.helpers import running_app
from tests.integrator.receiver import receiving, verified

KEYS = ("webhook-key-a-0123456789", "webhook-key-b-0123456789")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_signed_events_arrive_filtered_and_in_order(backend: str) -> None:
    with receiving() as receiver:
        async with running_app(FakeEngine(step_seconds=0.4), webhook_allow_private=True, api_keys=KEYS,
                               webhook_secret=("server-secret-new", "server-secret-old")) as app:
            secrets = (await app.client.get("/v1/webhooks/secret", headers=_auth(KEYS[0]))).json()
            other = (await app.client.get("/v1/webhooks/secret", headers=_auth(KEYS[1]))).json()
            assert secrets["secret"].startswith("whsec_") and secrets["secret"] == secrets["secrets"][0]
            assert len(secrets["secrets"]) == 2  # rotation: both listed, the newest first
            assert other["secret"] != secrets["secret"]  # per key: no tenant can forge another's
            body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 3,
                    "webhook": {"url": receiver.url, "events": ["start", "progress", "completed"]}}
            answer = await app.client.post("/v1/jobs", json=body, headers=_auth(KEYS[0]))
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            # A second job with the default filter: only its completion.
            body_default = {**body, "webhook": {"url": receiver.url}}
            default_id = (await app.client.post("/v1/jobs", json=body_default, headers=_auth(KEYS[0]))).json()["job_id"]
            got = await receiver.wait_for(lambda got: sum(r.event == "job.completed" for r in got) == 2)

    payloads = [verified(secrets["secret"], r) for r in got]
    for request in got:  # the old secret verifies too (one signature per server secret)
        verified(secrets["secrets"][1], request)
        with pytest.raises(Exception, match="signature"):
            verified(other["secret"], request)
    mine = [p for p in payloads if p["data"]["job_id"] == job_id]
    events = [p["type"] for p in mine]
    assert events[0] == "job.start" and events[-1] == "job.completed", events
    assert set(events[1:-1]) == {"job.progress"}, events  # at most one a second: 4 steps of 0.4 s
    assert mine[0]["data"]["status"] == "running"
    final = mine[-1]["data"]
    assert final["status"] == "completed" and final["image_url"].startswith(f"/v1/jobs/{job_id}/image")
    assert final["queue_seconds"] is not None and final["run_seconds"] is not None
    assert all(len(r.body) < 8192 for r in got)  # the view, never base64 images
    assert [p["type"] for p in payloads if p["data"]["job_id"] == default_id] == ["job.completed"]
    assert len({r.headers["webhook-id"] for r in got}) == len(got)  # one id per message


async def test_two_500s_are_retried_with_the_same_id_and_shown_as_attempts(backend: str) -> None:
    if backend == "memory":
        pytest.skip("the one-process outbox is the same over memory and SQLite; SQLite's run covers it")
    with receiving() as receiver:
        receiver.script = [500, 500]
        async with running_app(webhook_allow_private=True, webhook_secret=("server-secret",)) as app:
            secret = (await app.client.get("/v1/webhooks/secret")).json()["secret"]
            job_id = await app.submit(webhook={"url": receiver.url})
            got = await receiver.wait_for(lambda got: any(r.answered == 200 for r in got))
            attempts = (await app.client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]

    assert [r.answered for r in got] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in got}) == 1  # receivers dedupe on it
    assert len({r.headers["webhook-timestamp"] for r in got}) == 3  # each attempt signed afresh
    for request in got:
        assert verified(secret, request)["data"]["job_id"] == job_id
    [message] = attempts
    assert message["id"] == got[0].headers["webhook-id"] and message["event"] == "completed"
    assert message["state"] == "delivered"
    assert [a["status"] for a in message["attempts"]] == [500, 500, 200]


async def test_a_receiver_that_never_answers_2xx_is_given_up(backend: str) -> None:
    if backend != "memory":
        pytest.skip("the give-up rule is the outbox's, the same over every store; one store is enough")
    with receiving() as receiver:
        receiver.script = [503, 503]
        async with running_app(webhook_allow_private=True, webhook_max_attempts=2, webhook_secret=("s",)) as app:
            job_id = await app.submit(webhook={"url": receiver.url})

            async def given_up() -> bool:
                found = (await app.client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]
                return bool(found) and found[0]["state"] == "failed"

            await app.wait_for(given_up, timeout=15)
    assert [r.answered for r in receiver.snapshot()] == [503, 503]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254"])
async def test_a_private_target_is_refused_at_submit(backend: str, host: str) -> None:
    async with running_app(webhook_secret=("server-secret",)) as app:
        body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                "webhook": {"url": f"http://{host}:9/hook"}}
        answer = await app.client.post("/v1/jobs", json=body)
    assert answer.status_code == 422, answer.text  # invalid_request, as every bad field
    assert answer.json()["error"]["field"] == "webhook.url"
    assert "not a public address" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("webhook", "field"),
    [({"url": "ftp://example.com/x"}, "webhook.url"), ({"url": "http://example.com", "events": ["done"]}, "events")],
)
async def test_a_bad_webhook_is_a_400_naming_the_field(backend: str, webhook: dict[str, object], field: str) -> None:
    async with running_app(webhook_allow_private=True, webhook_secret=("server-secret",)) as app:
        answer = await app.client.post("/v1/jobs", json={"prompt": "a cat", "webhook": webhook})
    assert answer.status_code == 422, answer.text
    assert field in answer.text


async def test_a_fleet_delivers_after_the_sending_api_node_dies(backend: str) -> None:
    if backend != "redis":
        pytest.skip("a node's death is a fleet's matter; one process is covered by test_webhook_restart.py")
    with receiving() as receiver:
        receiver.script = [500]  # node A's first attempt fails; then node A dies with its lease held
        async with running_app(webhook_allow_private=True, webhook_secret=("fleet-secret",)) as app:
            job_id = await app.submit(webhook={"url": receiver.url})
            await receiver.wait_for(lambda got: len(got) == 1)
            node_a: RedisJobService = app.app.state.service
            await node_a._webhooks.close()  # its relay stops as a killed process's would, lease left behind
            node_b = RedisJobService(app.app.state.settings, ServiceMetrics())
            node_b.render_webhooks_with(job_detail)
            await node_b.start()
            try:
                got = await receiver.wait_for(lambda got: any(r.answered == 200 for r in got), timeout=20)
                # the receiver has answered; node B records the attempt just after: wait for that record
                for _ in range(200):
                    [message] = (await app.client.get(f"/v1/jobs/{job_id}/webhooks")).json()["webhooks"]
                    if message["state"] == "delivered":
                        break
                    await asyncio.sleep(0.05)
            finally:
                await node_b.close()
    assert [r.answered for r in got] == [500, 200]
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == message["id"]
    assert verified(node_b.webhook_secrets(None)[0], got[1])["data"]["status"] == "completed"
    assert [a["status"] for a in message["attempts"]] == [500, 200] and message["state"] == "delivered"
