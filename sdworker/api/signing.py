"""Signed job URLs: what lets an ``EventSource`` or an ``<img src>`` (which cannot send an
``Authorization`` header) follow the URL an authenticated caller was given.

A token is ``<expires>.<key id>.<mac>`` in the ``token`` query parameter, where ``key id`` names the API key
of the caller it was minted for (``key_id``: a one-way fingerprint, not the key) and ``mac`` is an HMAC-SHA256
of ``job_id``, ``expires`` and the key id under ``--signing-secret`` (shared by every API node of a fleet;
generated at start when alone, so tokens die with the process). It grants GET on that one job's stream and
images, nothing else, only while the key that minted it is still accepted (revoking a key revokes its URLs:
``AuthMiddleware`` asks the key ring), and only until ``expires``: the job's result expiry (``finished_at +
result_ttl_seconds`` once known, else ``created_at + result_ttl_seconds + MAX_JOB_SECONDS``). After the result
is gone the job answers 404 anyway, since job ids are never reused. A token that is there but expired, forged
or minted for a revoked key answers 403 (the caller was identified, and refused); no token at all, 401.

With ``--results-s3`` a job's image URLs are the bucket's presigned GETs instead (``stores/results.py``),
lasting the same: ``X-Amz-Expires`` is the job's retention left when the view is made.
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
from sdworker.stores.results import ResultStore

# The longest a job may wait and run before its result: a token issued at submit lasts this long
# plus the result TTL. A job still queued after a day has bigger problems than its stream URL.
MAX_JOB_SECONDS = 86400.0

_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{22,64})", re.ASCII)
# The only paths a token opens: one job's stream and its images.
SIGNED_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_-]{1,128})/(stream|image)", re.ASCII)


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


class Links:
    """One caller's job URLs: signed for the caller's API key (``key`` is its ``key_id``), as is when
    authentication is off; images presigned in the bucket when the results live in one
    (``--results-s3``). Every URL lasts until the job's result expires (``expires_at``)."""

    def __init__(
        self, signer: UrlSigner | None = None, key: str | None = None, *, ttl_seconds: float = 0.0,
        results: ResultStore | None = None,
    ) -> None:
        self._signer = signer if key is not None else None
        self._key = key
        self._ttl = ttl_seconds
        self._results = results

    def __call__(self, view: JobView, url: str) -> str:
        if self._signer is None or self._key is None:
            return url
        return self._signer.sign(view.job_id, url, self.token_expiry(view), self._key)

    def expires_at(self, view: JobView) -> float | None:
        """When the job's result is forgotten (None until it finishes): its URLs die with it."""
        return None if view.finished_at is None else view.finished_at + self._ttl

    def token_expiry(self, view: JobView) -> float:
        expires = self.expires_at(view)
        return view.spec.created_at + self._ttl + MAX_JOB_SECONDS if expires is None else expires

    def image(self, view: JobView, index: int | None = None) -> str:
        """Image ``index`` of a finished job (None: the first, by the short URL)."""
        expires = self.expires_at(view)
        if self._results is not None and expires is not None:
            presigned = self._results.url(view.job_id, index or 0, expires)
            if presigned is not None:
                return presigned
        path = f"/v1/jobs/{view.job_id}/image" + ("" if index is None else f"?index={index}")
        return self(view, path)


# What views take: a caller's ``Links`` (the name stays from when it was a plain function).
LinkFn = Links


class JobLinks:
    """Makes each caller's ``Links``: signed for the caller's key (when authentication is on), images
    presigned by the result store when it mints URLs of its own (S3)."""

    def __init__(
        self, signer: UrlSigner | None, result_ttl_seconds: float, results: ResultStore | None = None,
        key_of_owner: Callable[[str], str | None] | None = None,
    ) -> None:
        self._signer = signer
        self._ttl = result_ttl_seconds
        self._results = results
        self._key_of_owner = key_of_owner

    def for_key(self, key: str | None) -> Links:
        """The links of a caller whose API key has this ``key_id`` (None: unsigned links)."""
        return Links(self._signer, key, ttl_seconds=self._ttl, results=self._results)

    def for_owner(self, owner: str | None) -> Links:
        """The links of a job's owner when no request is at hand (a webhook's body): signed for one of
        the owner's keys still accepted, so revoking it revokes them too."""
        key = self._key_of_owner(owner) if owner is not None and self._key_of_owner is not None else None
        return self.for_key(key)


plain_link = Links()
