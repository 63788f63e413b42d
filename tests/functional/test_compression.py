"""The shipped rules store katiba bodies compressed (``compress: {min_bytes: 256}``): what a client gets
from a HIT is byte for byte what the backend sent on the MISS, on both request paths and both stores,
and the store holds fewer bytes than the body."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict

from .conftest import API, auth, new_user

PROFILE_FULL = f"{API}/users/profile/full"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])
async def test_a_compressed_entry_answers_hits_with_the_backends_exact_bytes(make_proxy, backend, fast_path):
    proxy = await make_proxy(fast_path=fast_path)
    user = new_user()
    await backend.seed(user)
    headers = auth(user)
    miss = await proxy.get(PROFILE_FULL, headers=headers)
    assert miss.x_cache == "MISS" and len(miss.body) >= 256, miss
    await proxy.writes_landed()

    lookup, _ = proxy.proxy.fast_lookup(PROFILE_FULL, "", CIMultiDict(headers))
    raw, _ = await proxy.proxy.store.lookup(lookup.key, lookup.gen_keys)
    assert raw[:2] == b"KZ" and len(raw) < len(miss.body)  # stored compressed, metadata included

    hits = [await proxy.get(PROFILE_FULL, headers=headers) for _ in range(2)]
    assert [h.x_cache for h in hits] == ["HIT", "HIT"]
    assert all(h.body == miss.body for h in hits)
    assert all(int(h.headers["Content-Length"]) == len(miss.body) for h in hits)
    assert await backend.route_count("GET", PROFILE_FULL) == 1
