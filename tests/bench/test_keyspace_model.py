"""bench/keyspace_model.py's parts that do not measure: every modelled request is a hit answered from the
store, one lookup each, so that its CPU per request is the hit path's and nothing else."""
from __future__ import annotations

import asyncio

from bench.keyspace_model import run_level


def test_every_modelled_request_is_one_store_lookup_answered_as_a_hit():
    level = asyncio.run(run_level(keys=40, requests=300))
    assert (level["users"], level["variants"]) == (20, 1)
    assert level["hits"] == level["requests"] == 300
    assert level["store_lookups"] == 300  # the memory store counts its commands: one lookup per request


def test_a_level_beyond_the_users_cap_is_read_through_its_variants(monkeypatch):
    import bench.keyspace_model as model

    monkeypatch.setattr(model, "MAX_USERS", 10)
    level = asyncio.run(run_level(keys=60, requests=200))
    assert (level["users"], level["variants"]) == (10, 3)
    assert level["hits"] == level["store_lookups"] == 200


def test_numbered_requests_are_modelled_hits_too():
    level = asyncio.run(run_level(keys=40, requests=300, numbered=True))
    assert level["numbered"] and level["hits"] == level["store_lookups"] == 300


def test_first_sightings_are_the_timed_requests_whose_head_the_process_never_drew_before(monkeypatch):
    """The split the step is read by (BENCHMARKS.md): a head framed once is remembered, so only a head
    the warm-up never drew, at its first timed draw, is new to the process."""
    import bench.keyspace_model as model
    from proxy.serve import framing

    monkeypatch.setattr(model, "MAX_USERS", 10)
    # a level runs in a process of its own: no head framed by another test's level
    monkeypatch.setattr(framing, "_FRAMED", framing.SizedMemo("heads", framing.FRAMED_SHARE, framing._framed_size))
    level = asyncio.run(run_level(keys=200, requests=150))
    drawn = model.draws(level["users"], level["variants"], 300)
    assert level["first_sights"] == len(set(drawn[150:]) - set(drawn[:150])) > 0
    assert level["us_first_sight"] is not None and level["us_repeat"] is not None
