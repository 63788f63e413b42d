"""The few error types the product raises, and where each is handled.

    KatibaError
    ├── RulesError        rules.yaml is invalid; carries every problem as (file, line, field, message)
    ├── IdentityError     a bearer token failed verification; the request is bypassed, never a 500
    ├── StoreUnavailable  the store timed out or failed; callers fail open to the backend
    └── UpstreamError     the backend could not be reached (502) or timed out (504)
        └── ClientBodyError  the client's own request body failed while it was being sent on (400)

Redis exceptions never leave ``proxy/store``; aiohttp HTTP exceptions are raised only in ``proxy/serve``.
"""
from __future__ import annotations

from dataclasses import dataclass


class KatibaError(Exception):
    """Root of every error the proxy raises on purpose."""


@dataclass(frozen=True)
class RuleProblem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class RulesError(KatibaError):
    def __init__(self, problems: list[RuleProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class IdentityError(KatibaError):
    """The token is missing, malformed, expired, forged or lacks ``sub``; ``reason`` is a small enum."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class StoreUnavailable(KatibaError):
    """The store could not answer in time; the request goes to the backend instead."""


class LookupRedirected(KatibaError):
    """A lookup sent as a future reached a node that no longer owns the key (a Redis Cluster slot on the
    move): the store's awaited ``lookup``, which follows the redirection, has to answer it instead."""


class UpstreamError(KatibaError):
    """``kind`` (the metric label, ``proxy/upstream/failures.py``): connect, timeout, framing, body, busy;
    ``cause``: the underlying exception as ``Class: message``, for the log (never sent to clients)."""

    def __init__(self, status: int, detail: str, kind: str | None = None, cause: str = ""):
        self.status = status
        self.detail = detail
        self.kind = kind or ("timeout" if status == 504 else "connect")
        self.cause = cause
        super().__init__(detail)


class ClientBodyError(UpstreamError):
    """The request body stopped before its framing's end, on the client's side: the client went away or
    broke its chunked framing. The request to the backend failed, but not by the backend's doing: a 400,
    never counted or logged as a backend failure (``kind`` "client"), and never sent again."""

    def __init__(self, exc: BaseException):
        super().__init__(400, "the request body ended before the end its Content-Length (or chunked framing) "
                              "announced", "client", f"{type(exc).__name__}: {exc}")
