"""Standard Webhooks signatures and the per-owner secrets they are made with.

Each owner (an API key's name; ``""`` without authentication) gets its own secret, derived from the
server's secret so that every node of a fleet derives the same one and no tenant can forge another's
webhooks: ``whsec_`` + base64(HMAC-SHA256(server secret, owner)). A receiver verifies
``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(its secret, f"{id}.{timestamp}.{body}")).

Rotation: the server may hold several secrets, newest first. Every attempt carries one signature per
secret (space-separated, as the specification allows), so a receiver that still has the old secret
verifies as well as one that has the new one; ``GET /v1/webhooks/secret`` hands out the newest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def owner_secret(server_secret: str, owner: str | None) -> str:
    """The ``whsec_`` secret of ``owner`` (None = no authentication: one shared owner, ``""``)."""
    digest = hmac.new(server_secret.encode(), (owner or "").encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode("ascii")


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,...`` signature of ``body`` sent as ``message_id`` at ``timestamp`` (Unix seconds)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signed_headers(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt; one signature per secret, newest first."""
    if not secrets:
        raise ValueError("no webhook secret to sign with")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(secret, message_id, timestamp, body) for secret in secrets),
        "content-type": "application/json",
    }
