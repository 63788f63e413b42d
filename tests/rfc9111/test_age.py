"""RFC 9111 §5.1 (Age) as §4.2.3 uses it: an ``Age`` that is not one valid delta-seconds never makes a
response look younger than it may be. A list (one field line or several) counts as its largest member;
a member that is not a delta-seconds makes the response stale on arrival. Both stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

P = "/r/age"


@pytest.mark.parametrize("ages", [["7200, 0"], ["0, 7200"], ["7200", "0"], ["0", "7200"], ["7200,7200"],
                                  ["0, old"], ["abc"], ["-7200"], ["7200.0"]],
                         ids=["list-old-first", "list-old-last", "two-lines-old-first", "two-lines-old-last",
                              "list-dup-old", "list-invalid-member", "non-numeric", "negative", "float"])
async def test_5_1_age_that_is_not_one_valid_value_is_read_as_old(cache, ages):
    headers = [("Cache-Control", "max-age=3600")] + [("Age", a) for a in ages]
    cache.origin.script(P, Resp(headers=headers))
    await cache.get(P)
    cache.clock.advance(3)
    reply = await cache.get(P)
    assert cache.origin.count(P) == 2, reply  # stale on arrival: fetched again, never a HIT with Age: 3
    assert reply.x_cache == "MISS"


@pytest.mark.parametrize("ages", [["0, 0"], ["0", "0"], ["60"], ["60, 60"]],
                         ids=["list-dup-0", "two-lines-0", "single", "list-dup"])
async def test_5_1_valid_age_list_is_honoured(cache, ages):
    headers = [("Cache-Control", "max-age=3600")] + [("Age", a) for a in ages]
    cache.origin.script(P, Resp(headers=headers))
    await cache.get(P)
    cache.clock.advance(3)
    reply = await cache.get(P)
    expected = 3 + max(int(v) for a in ages for v in a.split(","))
    assert (reply.x_cache, reply.headers["Age"], cache.origin.count(P)) == ("HIT", str(expected), 1)
