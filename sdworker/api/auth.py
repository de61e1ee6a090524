"""Who is calling: API keys, owners and signed URLs, checked once for every request.

With ``--api-key`` (repeatable, ``SDWORKER_API_KEYS``, ``--api-keys-file``) or ``--admin-api-key``
set, every route needs ``Authorization: Bearer <key>`` except ``/health``, ``/ready``, the page's
static files (``/``, ``/page/*``) and the API description (``/docs``, ``/openapi.json``: no data),
and ``/metrics`` when ``--metrics-public``. A1111 clients can only send HTTP Basic, so ``/sdapi/*``
also takes ``Basic`` with the key as the password. ``GET`` of one job's stream or image also takes
the ``token`` query parameter of a signed URL (``api/signing.py``): EventSource and ``<img src>``
cannot send headers; a token that is expired, forged or of a revoked key is a 403. A 401 answers in the
path's dialect (``api/errors.py``) with ``WWW-Authenticate``.

The caller's identity goes into ``request.state.owner`` (read by ``deps.owner``): for a key, a stable
non-secret name derived from it (``key-`` + 16 hex of a SHA-256), the same on every node and after a
restart; ``None`` for an admin key (sees every job) and for a signed URL (the path names the job the
token was signed for). Keys are compared as SHA-256 digests with ``hmac.compare_digest`` (constant
time, whatever the length), and never logged: a reload logs only how many keys it read.

The key ring is re-read on SIGHUP (``install_reload``), so a rotated ``--api-keys-file`` takes effect
without a restart; a file that cannot be read, holds no key or a key shorter than the start-up
rule allows (``Settings.all_api_keys``) keeps the keys we had, and the log says why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import signal
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from sdworker.api.errors import error_response
from sdworker.api.signing import SIGNED_PATH, UrlSigner, key_id
from sdworker.settings import KeyQuota, KeysFileError, Settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready", "/", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/page/", "/docs/")
ADMIN_PREFIXES = ("/v1/dead",)
BAD_TOKEN = "token: the signed URL is not valid for this job, has expired, or its API key was revoked"


@dataclass(frozen=True, slots=True)
class Identity:
    owner: str | None  # None = sees every job
    kind: str  # "off" (auth off) | "key" | "admin" | "token" (a signed URL)
    key_id: str | None = None  # the API key's fingerprint (signing.key_id): the URLs it is given name it


OFF = Identity(None, "off")


def owner_name(key: str) -> str:
    """A key's owner name: stable, short, and useless for finding the key."""
    return "key-" + hashlib.sha256(b"sdworker owner\0" + key.encode()).hexdigest()[:16]


class KeyRing:
    """The accepted keys, as digests. ``identify`` walks every key so the time taken does not say
    which (or whether a prefix) matched."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keys: tuple[tuple[bytes, Identity], ...] = ()
        self._key_ids: frozenset[str | None] = frozenset()
        self._quotas: dict[str, KeyQuota] = {}
        self.enabled = settings.has_auth()
        self.reload()

    def reload(self) -> None:
        try:
            users = self._settings.all_api_keys()
            quotas = self._settings.key_quotas()
        except KeysFileError as exc:  # the start-up check, at every reload: a bad file changes nothing
            log.error("API keys not reloaded, keeping the %d keys we had: %s", len(self._keys), exc)
            return
        self._quotas = {owner_name(key): quota for key, quota in quotas.items()}
        keys = [(_digest(k), Identity(owner_name(k), "key", key_id(k))) for k in users]
        keys += [(_digest(k), Identity(None, "admin", key_id(k))) for k in self._settings.admin_api_keys]
        self._keys = tuple(keys)
        self._key_ids = frozenset(identity.key_id for _, identity in keys)
        if self.enabled:
            log.info("API keys loaded: %d user, %d admin", len(users), len(self._settings.admin_api_keys))

    def quota(self, owner: str | None) -> KeyQuota | None:
        """The keys file's settings for ``owner`` (an API key's owner name); None = no quota."""
        return self._quotas.get(owner) if owner is not None else None

    def key_of(self, owner: str) -> str | None:
        """The ``key_id`` of one accepted key of ``owner`` (a webhook's signed URLs name it), if any."""
        return next((identity.key_id for _, identity in self._keys if identity.owner == owner), None)

    def accepts_key_id(self, key: str) -> bool:
        """Whether the key a signed URL was minted for is still one of ours (a revoked key's URLs die)."""
        return key in self._key_ids

    def identify(self, key: str) -> Identity | None:
        candidate = _digest(key)
        found = None
        for digest, identity in self._keys:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = identity
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def url_signer(settings: Settings) -> UrlSigner:
    """The signer of job URLs. In a fleet every API node must share ``--signing-secret``: a URL
    signed by one node is followed to another; a generated secret is this process's alone."""
    if settings.has_auth() and settings.redis_url and not settings.signing_secret:
        log.warning("no --signing-secret in a fleet: signed stream and image URLs work only on this API node")
    return UrlSigner(settings.signing_secret)


def install_reload(ring: KeyRing) -> None:
    """Re-read the keys on SIGHUP (the main thread's loop only: tests run the app elsewhere)."""
    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, ring.reload)


class AuthMiddleware:
    """Sets ``scope["state"]["owner"]``/``["auth"]`` or answers 401/403. Inside the edge guard, so a
    bad Host or a CORS preflight is answered before keys are asked for."""

    def __init__(self, app: ASGIApp, ring: KeyRing, signer: UrlSigner, metrics_public: bool) -> None:
        self.app = app
        self.ring = ring
        self.signer = signer
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.ring.enabled or self._public(scope["path"]) or scope["method"] == "OPTIONS":
            state["owner"], state["auth"] = None, "off"
            await self.app(scope, receive, send)
            return
        identity, problem = self._identify(scope)
        if identity is None:
            if problem == BAD_TOKEN:  # a signed URL, expired or revoked: known, and refused (not "who are you?")
                await self._refuse(scope, receive, send, 403, "forbidden", problem)
            else:
                await self._refuse(scope, receive, send, 401, "unauthorized", problem)
            return
        if scope["path"].startswith(ADMIN_PREFIXES) and identity.kind != "admin":
            await self._refuse(scope, receive, send, 403, "forbidden", "this route needs an admin API key")
            return
        state["owner"], state["auth"], state["key_id"] = identity.owner, identity.kind, identity.key_id
        await self.app(scope, receive, send)

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or (
            path == "/metrics" and self.metrics_public
        )

    def _identify(self, scope: Scope) -> tuple[Identity | None, str]:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        path: str = scope["path"]
        if header is not None:
            scheme, _, credentials = header.decode("latin-1").strip().partition(" ")
            key = None
            if scheme.lower() == "bearer":
                key = credentials.strip()
            elif scheme.lower() == "basic" and path.startswith("/sdapi/"):
                key = _basic_password(credentials.strip())
            if not key:
                return None, "Authorization: expected 'Bearer <API key>'" + (
                    " or HTTP Basic with the key as password" if path.startswith("/sdapi/") else ""
                )
            identity = self.ring.identify(key)
            return (identity, "") if identity else (None, "the API key is not valid")
        signed = SIGNED_PATH.fullmatch(path)
        if signed is not None and scope["method"] in ("GET", "HEAD"):
            tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            if tokens:
                minted_for = self.signer.verify(signed.group(1), tokens[0])
                if minted_for is not None and self.ring.accepts_key_id(minted_for):
                    return Identity(None, "token"), ""
                return None, BAD_TOKEN
        return None, "an API key is needed: send 'Authorization: Bearer <API key>'"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        path = scope["path"]
        response = error_response(code, message, status, path=path)
        if status == 401:
            response.headers["WWW-Authenticate"] = (
                'Basic realm="sdworker", Bearer realm="sdworker"' if path.startswith("/sdapi/")
                else 'Bearer realm="sdworker"'
            )
        await response(scope, receive, send)


def _basic_password(credentials: str) -> str | None:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else decoded
