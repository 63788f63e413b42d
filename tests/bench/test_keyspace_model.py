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
