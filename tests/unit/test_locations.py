"""proxy/core/locations.py: which Location values are on the upstream base, and what they become."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.core.locations import UpstreamAddress, client_base, needs_rewrite, rewrite

BACKEND = UpstreamAddress.from_url("http://Backend.internal:8000")
PREFIXED = UpstreamAddress.from_url("https://api.internal/katiba/")


@pytest.mark.parametrize("value,rest", [
    ("http://backend.internal:8000/api/v1/users/profile", "/api/v1/users/profile"),
    ("HTTP://BACKEND.INTERNAL:8000/x?y=1#z", "/x?y=1#z"),
    ("http://backend.internal:8000", "/"),
    ("https://backend.internal:8000/x", "/x"),  # a backend trusting X-Forwarded-Proto: same address
    ("http://backend.internal/x", None),  # port 80: another server
    ("http://backend.internal:8001/x", None),
    ("http://backend.internal.evil:8000/x", None),
    ("http://user@backend.internal:8000/x", "/x"),
    ("/api/v1/users/profile", None),  # relative: already the client's address
    ("//backend.internal:8000/x", None),
    ("http://backend.internal:99999/x", None),  # not a port
    ("mailto:someone@backend.internal", None),
])
def test_what_is_on_the_upstream_base(value, rest):
    assert BACKEND.rest(value) == rest


def test_a_base_path_is_a_whole_segment_prefix():
    assert PREFIXED.rest("https://api.internal/katiba/users") == "/users"
    assert PREFIXED.rest("https://api.internal:443/katiba") == "/"
    assert PREFIXED.rest("https://api.internal/katibaX/users") is None
    assert PREFIXED.rest("https://api.internal/other") is None


@pytest.mark.parametrize("host,proto,scheme,base", [
    ("cache.example", None, "http", "http://cache.example"),
    ("cache.example:8443", "https", "http", "https://cache.example:8443"),
    ("cache.example", "HTTPS, http", "http", "https://cache.example"),
    ("cache.example", "gopher", "https", "https://cache.example"),
    ("[::1]:8080", None, "http", "http://[::1]:8080"),
    (None, None, "http", ""),
    ("", None, "http", ""),
    ("evil.example/path", None, "http", ""),  # never more than an authority
    ("user@evil.example", None, "http", ""),
    ("a b", None, "http", ""),
])
def test_the_clients_address(host, proto, scheme, base):
    assert client_base(host, proto, scheme) == base


def test_rewrite_touches_only_backend_urls_and_keeps_the_rest():
    headers = CIMultiDict([("Location", "http://backend.internal:8000/a?b=1"), ("Content-Type", "text/plain"),
                           ("Content-Location", "https://cdn.example/a")])
    assert needs_rewrite(headers.items(), BACKEND)
    rewrite(headers, BACKEND, {"Host": "cache.example", "X-Forwarded-Proto": "https"}, "http")
    assert headers["Location"] == "https://cache.example/a?b=1"
    assert headers["Content-Location"] == "https://cdn.example/a" and headers["Content-Type"] == "text/plain"
    assert not needs_rewrite(headers.items(), BACKEND)
    assert needs_rewrite([("content-location", "http://backend.internal:8000/a")], BACKEND)  # stored names' case


def test_without_a_usable_host_the_rewrite_is_path_absolute():
    headers = CIMultiDict([("Location", "http://backend.internal:8000/a")])
    rewrite(headers, BACKEND, {}, "http")
    assert headers["Location"] == "/a"
