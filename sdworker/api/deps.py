"""What route handlers take from the app: the job service, the node, the settings, the caller."""

from __future__ import annotations

from fastapi import Request

from sdworker.api.signing import JobLinks, LinkFn
from sdworker.jobs.node import Node
from sdworker.jobs.protocol import JobService
from sdworker.settings import Settings


def service(request: Request) -> JobService:
    svc: JobService = request.app.state.service
    return svc


def node(request: Request) -> Node:
    n: Node = request.app.state.node
    return n


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def owner(request: Request) -> str | None:
    """The caller's identity: an API key's name once authentication is on (None = sees every job)."""
    value = getattr(request.state, "owner", None)
    return value if isinstance(value, str) else None


def links(request: Request) -> LinkFn:
    """Job URLs as the caller can follow them: signed when the caller authenticated (api/signing.py)."""
    job_links: JobLinks = request.app.state.links
    key = getattr(request.state, "key_id", None)
    return job_links.for_key(key if isinstance(key, str) else None)
