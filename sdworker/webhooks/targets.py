"""Where a webhook may go. A server that POSTs to URLs its clients name is a tool for server-side
request forgery (the cloud metadata address, the admin port on localhost, the database next door), so
a target is accepted only if every address its host resolves to is global (``ipaddress.is_global``),
unless the operator allows private targets (``--webhook-allow-private``, for tests and closed
networks). The check returns the address it approved, and the delivery connects to that address, not
to a fresh look-up (a DNS answer that changes between check and use, "DNS rebinding", gains nothing).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdworker.errors import InvalidRequest

MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class Target:
    """A checked webhook target: the URL as given, its host and port, and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str  # an IP address the host resolved to, checked
    path: str  # path and query, as sent in the request line


def check_target(url: str, *, allow_private: bool, field: str = "webhook.url") -> Target:
    """Parse and resolve ``url`` (blocking: a DNS look-up; call it off the event loop). Raises
    ``InvalidRequest`` naming ``field`` for a URL that is malformed, not http(s), or that resolves to
    any address that is not global while private targets are not allowed."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"{field}: longer than {MAX_URL_LENGTH} characters", field=field)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{field}: expected an http:// or https:// URL with a host", field=field)
    if parts.username or parts.password:
        raise InvalidRequest(f"{field}: credentials in the URL are not allowed", field=field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"{field}: the port is not a number in 1..65535", field=field) from None
    host = parts.hostname
    addresses = _resolve(host, port, field)
    if not allow_private:
        for address in addresses:
            if not ipaddress.ip_address(address).is_global:
                raise InvalidRequest(
                    f"{field}: {host} resolves to {address}, which is not a public address "
                    "(the server refuses private, loopback and link-local targets)",
                    field=field,
                )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, host, port, addresses[0], path)


def _resolve(host: str, port: int, field: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidRequest(f"{field}: the host {host!r} does not resolve", field=field) from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]  # an IPv6 scope (fe80::1%eth0) is not part of the address
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidRequest(f"{field}: the host {host!r} does not resolve", field=field)
    return addresses
