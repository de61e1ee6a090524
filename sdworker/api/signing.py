"""Signed job URLs: what lets an ``EventSource`` or an ``<img src>`` (which cannot send an
``Authorization`` header) follow the URL an authenticated caller was given.

A token is ``<expires>.<key id>.<mac>`` in the ``token`` query parameter, where ``key id`` names the API key
of the caller it was minted for (``key_id``: a one-way fingerprint, not the key) and ``mac`` is an HMAC-SHA256
of ``job_id``, ``expires`` and the key id under ``--signing-secret`` (shared by every API node of a fleet;
generated at start when alone, so tokens die with the process). It grants GET on that one job's stream and
images, nothing else, only while the key that minted it is still accepted (revoking a key revokes its URLs:
``AuthMiddleware`` asks the key ring), and only until ``expires``: the job's result expiry (``finished_at +
result_ttl_seconds`` once known, else ``created_at + result_ttl_seconds + MAX_JOB_SECONDS``). After the result
is gone the job answers 404 anyway, since job ids are never reused.
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

_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{22,64})", re.ASCII)
# The only paths a token opens: one job's stream and its images.
SIGNED_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_-]{1,128})/(stream|image)", re.ASCII)

# (job view, url) -> the url its caller can follow (``JobLinks``; ``plain_link`` when auth is off).
LinkFn = Callable[[JobView, str], str]


def key_id(key: str) -> str:
    """An API key's fingerprint in its tokens: the same on every node, useless for finding the key."""
    return hashlib.sha256(b"sdworker key id\0" + key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class UrlSigner:
    def __init__(self, secret: str | None) -> None:
        self._key = (secret or secrets.token_urlsafe(32)).encode()

    def token(self, job_id: str, expires: float, key: str) -> str:
        """``key``: the ``key_id`` of the caller's API key."""
        stamp = str(int(expires))
        return f"{stamp}.{key}.{self._mac(job_id, stamp, key)}"

    def verify(self, job_id: str, token: str, *, now: float | None = None) -> str | None:
        """The key id the token was minted for, when it is genuine, for this job and not expired."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        stamp, key, mac = match.groups()
        if int(stamp) < (time.time() if now is None else now):
            return None
        return key if hmac.compare_digest(mac, self._mac(job_id, stamp, key)) else None

    def sign(self, job_id: str, url: str, expires: float, key: str) -> str:
        joiner = "&" if "?" in url else "?"
        return f"{url}{joiner}token={quote(self.token(job_id, expires, key), safe='')}"

    def _mac(self, job_id: str, stamp: str, key: str) -> str:
        digest = hmac.new(self._key, f"job:{job_id}:{stamp}:{key}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


class JobLinks:
    """Turns a job's URL into the one its caller can follow: signed for the caller's key, as is when
    authentication is off (or the caller has no key). The token lasts until the job's result expires."""

    def __init__(self, signer: UrlSigner | None, result_ttl_seconds: float) -> None:
        self._signer = signer
        self._ttl = result_ttl_seconds

    def for_key(self, key: str | None) -> LinkFn:
        """The link function of a caller whose API key has this ``key_id`` (None: unsigned links)."""
        if self._signer is None or key is None:
            return plain_link
        return lambda view, url: self._sign(view, url, key)

    def _sign(self, view: JobView, url: str, key: str) -> str:
        assert self._signer is not None
        if view.finished_at is not None:
            expires = view.finished_at + self._ttl
        else:
            expires = view.spec.created_at + self._ttl + MAX_JOB_SECONDS
        return self._signer.sign(view.job_id, url, expires, key)


def plain_link(view: JobView, url: str) -> str:
    return url
