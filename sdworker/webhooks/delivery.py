"""One delivery attempt of one webhook: a POST to the checked address, signed afresh.

Each attempt is signed with a new timestamp (receivers reject stale ones, five minutes by the
specification) and keeps the message's id (receivers dedupe on it). The connection goes to the address
``check_target`` approved, with the original host in ``Host`` and as the TLS server name, so the
certificate is still checked against the host. Redirects are not followed (a 3xx is a failure: a
redirect to an internal address would undo the target check), timeouts are short, and at most
``MAX_ANSWER_BYTES`` of the answer are read (a receiver that streams forever holds nothing).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from sdworker.webhooks.signing import signed_headers
from sdworker.webhooks.targets import Target

MAX_ANSWER_BYTES = 4096
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt gave: the HTTP status (None when no answer came) or the error, and when."""

    at: float
    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def deliver(
    client: httpx.AsyncClient,
    target: Target,
    secrets: Sequence[str],
    message_id: str,
    body: bytes,
    *,
    now: float | None = None,
) -> Attempt:
    """POST ``body`` to ``target``; never raises for the receiver's or the network's faults."""
    at = time.time() if now is None else now
    headers = signed_headers(secrets, message_id, int(at), body)
    headers["host"] = target.host if _default_port(target) else f"{target.host}:{target.port}"
    headers["user-agent"] = "sdworker-webhooks"
    address = f"[{target.address}]" if ipaddress.ip_address(target.address).version == 6 else target.address
    url = f"{target.scheme}://{address}:{target.port}{target.path}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        return Attempt(at, None, f"{type(exc).__name__}: {str(exc)[:200] or 'no answer'}")
    if 300 <= response.status_code < 400:
        return Attempt(at, response.status_code, "redirects are not followed")
    return Attempt(at, response.status_code, None if 200 <= response.status_code < 300 else "not a 2xx answer")


def _default_port(target: Target) -> bool:
    return target.port == (443 if target.scheme == "https" else 80)


def backoff_seconds(attempt: int, *, base: float = 2.0, cap: float = 600.0) -> float:
    """Wait before attempt ``attempt + 1`` after ``attempt`` failed (1-based): 2, 4, 8, ... s, at most
    ``cap`` (ten minutes)."""
    return float(min(cap, base ** max(1, attempt)))
