"""The caller's webhook secret (docs/webhooks.md): what a receiver verifies this key's jobs' webhooks with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sdworker.api import deps

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhooks/secret", summary="The caller's whsec_ secret for verifying its jobs' webhooks")
async def webhook_secret(request: Request) -> dict[str, Any]:
    # Derived per API key (HMAC of the server's --webhook-secret and the key's name), so one tenant's
    # secret verifies only its own jobs' webhooks. While secrets rotate, `secrets` lists old ones too.
    secrets = deps.service(request).webhook_secrets(deps.owner(request))
    return {"secret": secrets[0], "secrets": list(secrets)}
