"""Backend failures are visible (issue 19, item 8): each is logged at warning with its cause (exception
class and message), its rule and method, never a user id or a path, at most one line per kind and second
with the number held back, and counted by kind. Against the raw origin, both stores."""
from __future__ import annotations

import logging

from tests.functional.conftest import auth, new_user, sample
from tests.rfc9111.conftest import Clock
from tests.rfc9111.rawserver import Answer, RawOrigin

W = "/api/v1/users/profile"  # PUT: the update_profile rule


class Frozen:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failures(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "upstream_failure"]


async def test_each_upstream_failure_is_logged_with_its_cause_rate_limited(make_cache, caplog):
    raw = await RawOrigin().start()
    raw.clock = Clock()
    try:
        raw.script(W, Answer(action="reset"))
        cache = await make_cache(origin=raw)
        clock = Frozen()  # seconds move only by hand
        report = getattr(cache.proxy.proxy.upstream, "failures", None)
        if report is not None:
            report.throttle.clock = clock
        user = new_user()
        caplog.set_level(logging.WARNING)
        for _ in range(5):
            reply = await cache.get(W, auth(user), method="PUT", data=b'{"name": "x"}')
            assert reply.status == 502, reply
        lines = failures(caplog)
        assert len(lines) == 1, lines  # one line per kind and second
        line = lines[0]
        assert (line.levelname, line.kind, line.rule, line.method, line.suppressed) == \
            ("WARNING", "connect", "update_profile", "PUT", 0)
        assert "Error" in line.cause and ":" in line.cause, line.cause  # exception class: message
        clock.now += 1
        await cache.get(W, auth(user), method="PUT", data=b"{}")
        assert [r.suppressed for r in failures(caplog)] == [0, 4]  # the held-back lines, counted
        assert all(user not in r.getMessage() and user not in str(r.__dict__) for r in caplog.records)
        assert all(W not in str(r.__dict__) for r in failures(caplog))  # no path: it may hold an id
        metrics = await cache.proxy.metrics()
        assert sample(metrics, "katiba_cache_upstream_errors_total", kind="connect") == 6
    finally:
        await raw.close()
