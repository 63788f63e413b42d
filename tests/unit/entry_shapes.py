"""Entries of the shapes the katiba API answers with, as a Redis hit hands them to the proxy: for the
tests that check what the memos and the L1 count against what those entries keep alive."""
from __future__ import annotations

import time
import uuid

from proxy.core.entry import Entry

SHAPES = [  # (headers, body bytes): a katiba profile, /auth/me, a leaderboard page, a bare answer
    ((("content-type", "application/json"), ("content-length", "612"), ("x-request-id", "r" * 32)), 612),
    ((("content-type", "application/json"), ("content-length", "1900"), ("vary", "Authorization"),
      ("cache-control", "private, max-age=0"), ("x-request-id", "r" * 32)), 1900),
    ((("content-type", "application/json"), ("content-length", "6000"), ("server", "uvicorn"),
      ("date", "Mon, 07 Dec 2026 03:00:00 GMT"), ("x-process-time", "0.0213"), ("vary", "Origin"),
      ("x-request-id", "r" * 32), ("etag", '"abc"')), 6000),
    ((("content-length", "2"),), 2),
]


def stored(headers, body_len: int) -> tuple[str, bytes, tuple[str, ...]]:
    """What a Redis hit hands L1: the key, the stored bytes, the guarding generation keys."""
    uid = str(uuid.uuid4())
    entry = Entry(200, headers, (uid * (body_len // 36 + 1))[:body_len].encode(), time.time(),
                  (uuid.uuid4().hex[:12], "1"), "f" * 16, f'"{uid[:16]}"')
    return f"katiba:v1:user:{uid}:profile", entry.encode(), (f"katiba:v1:gen:user:{uid}", "katiba:v1:gen:rule:r")
