"""RFC 9111 §5.1 (Age) as §4.2.3 uses it, read as the HTTP caching conformance suite (cache-tests,
age-parse-*) requires: the first member of the first field line counts (``Age: 7200, 0`` and the lines
``7200`` then ``0`` are 7200: stale; ``0, 7200`` is 0: fresh; empty members do not count, RFC 9110
§5.6.1), a first member that is not a delta-seconds
(``abc``, ``-7200``, ``7200.0``) is ignored as if no Age were sent, and parameters after a valid number
(``7200;foo=bar``) leave the number. Both stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

P = "/r/age"


async def twice_three_seconds_apart(cache, ages):
    headers = [("Cache-Control", "max-age=3600")] + [("Age", a) for a in ages]
    cache.origin.script(P, Resp(headers=headers))
    await cache.get(P)
    cache.clock.advance(3)
    return await cache.get(P)


@pytest.mark.parametrize("ages", [["7200, 0"], ["7200", "0"], ["7200,7200"], ["7200;foo=bar"], ["7200, old"],
                                  [", 7200"], ["", "7200"], ["9" * 5000]],
                         ids=["list-old-first", "two-lines-old-first", "list-dup-old", "parameter", "list-old-then-bad",
                              "empty-member-first", "empty-line-first", "5000-digits"])
async def test_5_1_age_whose_first_member_is_old_makes_the_response_stale(cache, ages):
    reply = await twice_three_seconds_apart(cache, ages)
    assert cache.origin.count(P) == 2, reply  # stale on arrival: fetched again, never a HIT with Age: 3
    assert reply.x_cache == "MISS"


@pytest.mark.parametrize("ages", [["0, 7200"], ["0", "7200"], ["0, old"]],
                         ids=["list-old-last", "two-lines-old-last", "list-bad-member-last"])
async def test_5_1_age_list_counts_its_first_member(cache, ages):
    reply = await twice_three_seconds_apart(cache, ages)
    assert (reply.x_cache, reply.headers["Age"], cache.origin.count(P)) == ("HIT", "3", 1), reply


@pytest.mark.parametrize("ages", [["abc"], ["-7200"], ["7200.0"], ["abc, 7200"]],
                         ids=["non-numeric", "negative", "float", "bad-first-member"])
async def test_5_1_age_that_is_not_a_delta_seconds_is_ignored(cache, ages):
    reply = await twice_three_seconds_apart(cache, ages)
    assert (reply.x_cache, reply.headers["Age"], cache.origin.count(P)) == ("HIT", "3", 1), reply


@pytest.mark.parametrize("ages", [["0, 0"], ["0", "0"], ["60"], ["60, 60"]],
                         ids=["list-dup-0", "two-lines-0", "single", "list-dup"])
async def test_5_1_valid_age_list_is_honoured(cache, ages):
    reply = await twice_three_seconds_apart(cache, ages)
    expected = 3 + max(int(v) for a in ages for v in a.split(","))
    assert (reply.x_cache, reply.headers["Age"], cache.origin.count(P)) == ("HIT", str(expected), 1)
