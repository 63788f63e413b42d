"""Backend URLs in ``Location`` and ``Content-Location``, rewritten to the address the client used.

The backend builds absolute redirects (FastAPI's trailing-slash 307, for one) from the Host it was sent:
the upstream's own unless ``PRESERVE_HOST``. Answered as they are, they would show clients the backend's
address and send them around the proxy. As nginx's ``proxy_redirect default``: a URL on the upstream
base (same host and port, under its base path, http or https) becomes the same path and query on the
client's address: the scheme from ``X-Forwarded-Proto`` (else the connection's), the host from the
client's ``Host``; without a usable Host, a path-absolute reference (RFC 9110 §10.2.2 allows it).

Rewritten per answer, never in the store: an entry keeps the backend's URL, so one client's Host never
reaches another client's answer. Pure: no sockets, no store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict
from yarl import URL

FIELDS = ("Location", "Content-Location")
_FIELDS_LOWER = frozenset(name.lower() for name in FIELDS)
_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class UpstreamAddress:
    host: str  # lower-case, IPv6 without brackets
    port: int
    base_path: str  # without a trailing slash; "" for the root

    @classmethod
    def from_url(cls, url: str) -> "UpstreamAddress":
        parsed = URL(url)
        return cls((parsed.host or "").lower(), parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 80),
                   parsed.raw_path.rstrip("/"))

    def rest(self, value: str) -> str | None:
        """What follows the upstream base in ``value`` (path, query, fragment), or None: not on it."""
        if not value[:8].lower().startswith(("http://", "https://")):
            return None
        try:
            parts = urlsplit(value.strip())
            port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
        except (ValueError, KeyError):
            return None
        if (parts.hostname or "") != self.host or port != self.port:
            return None
        path = parts.path
        if self.base_path:
            if path != self.base_path and not path.startswith(self.base_path + "/"):
                return None
            path = path[len(self.base_path):]
        return (path or "/") + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def client_base(host: str | None, forwarded_proto: str | None, scheme: str) -> str:
    """``scheme://host`` of the address the client used, or "" when its Host is missing or unusable."""
    proto = (forwarded_proto or "").partition(",")[0].strip().lower()
    if proto not in _DEFAULT_PORTS:
        proto = scheme
    if not host or not _HOST.fullmatch(host):
        return ""
    return f"{proto}://{host}"


def needs_rewrite(fields: Iterable[tuple[str, str]], upstream: UpstreamAddress) -> bool:
    """Whether ``rewrite`` would change any of ``fields`` (name, value pairs: a stored entry's, or
    ``headers.items()``); read as pairs so that a stored entry needs no multidict made for it."""
    return any(name.lower() in _FIELDS_LOWER and upstream.rest(value) is not None for name, value in fields)


def rewrite(headers: CIMultiDict, upstream: UpstreamAddress, request_headers: Mapping[str, str], scheme: str) -> None:
    """Point every ``Location``/``Content-Location`` of ``headers`` on ``upstream`` at the client's address
    (``request_headers``' Host and X-Forwarded-Proto, else ``scheme``), in place."""
    for name in FIELDS:
        values = headers.getall(name, ())
        rests = [upstream.rest(v) for v in values]
        if all(r is None for r in rests):
            continue
        base = client_base(request_headers.get("Host"), request_headers.get("X-Forwarded-Proto"), scheme)
        headers.popall(name)
        for value, rest in zip(values, rests):
            headers.add(name, value if rest is None else base + rest)
