"""Signed job URLs: what lets an ``EventSource`` or an ``<img src>`` (which cannot send an
``Authorization`` header) follow the URL an authenticated caller was given.

A token is ``<expires>.<mac>`` in the ``token`` query parameter, where ``mac`` is an HMAC-SHA256 of
``job_id`` and ``expires`` under ``--signing-secret`` (shared by every API node of a fleet; generated
at start when alone, so tokens die with the process). It grants GET on that one job's stream and
images, nothing else, and only until ``expires``: the job's result expiry (``finished_at +
result_ttl_seconds`` once known, else ``created_at + result_ttl_seconds + MAX_JOB_SECONDS``). After the
result is gone the job answers 404 anyway, since job ids are never reused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

from sdworker.jobs.state import JobView

# The longest a job may wait and run before its result: a token issued at submit lasts this long
# plus the result TTL. A job still queued after a day has bigger problems than its stream URL.
MAX_JOB_SECONDS = 86400.0

_TOKEN = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{22,64})", re.ASCII)
# The only paths a token opens: one job's stream and its images.
SIGNED_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_-]{1,128})/(stream|image)", re.ASCII)

# (job view, url) -> the url its caller can follow (``JobLinks``; ``plain_link`` when auth is off).
LinkFn = Callable[[JobView, str], str]


class UrlSigner:
    def __init__(self, secret: str | None) -> None:
        self._key = (secret or secrets.token_urlsafe(32)).encode()

    def token(self, job_id: str, expires: float) -> str:
        stamp = str(int(expires))
        return f"{stamp}.{self._mac(job_id, stamp)}"

    def verify(self, job_id: str, token: str, *, now: float | None = None) -> bool:
        match = _TOKEN.fullmatch(token)
        if match is None:
            return False
        stamp, mac = match.groups()
        if int(stamp) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(mac, self._mac(job_id, stamp))

    def sign(self, job_id: str, url: str, expires: float) -> str:
        joiner = "&" if "?" in url else "?"
        return f"{url}{joiner}token={quote(self.token(job_id, expires), safe='')}"

    def _mac(self, job_id: str, stamp: str) -> str:
        digest = hmac.new(self._key, f"job:{job_id}:{stamp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


class JobLinks:
    """Turns a job's URL into the one its caller can follow: signed for an authenticated caller,
    as is when authentication is off. The token lasts until the job's result expires."""

    def __init__(self, signer: UrlSigner | None, result_ttl_seconds: float) -> None:
        self._signer = signer
        self._ttl = result_ttl_seconds

    def __call__(self, view: JobView, url: str) -> str:
        if self._signer is None:
            return url
        if view.finished_at is not None:
            expires = view.finished_at + self._ttl
        else:
            expires = view.spec.created_at + self._ttl + MAX_JOB_SECONDS
        return self._signer.sign(view.job_id, url, expires)


def plain_link(view: JobView, url: str) -> str:
    return url
