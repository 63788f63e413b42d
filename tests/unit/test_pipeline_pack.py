"""The auto-pipeline encodes commands with hiredis' C packer; it must write what the Python one does."""
from __future__ import annotations

import pytest

from proxy.store.pipeline import _pack_command, pack_command


@pytest.mark.parametrize("args", [
    ("MGET", "katiba360:proxy:user:{42}:profile", "katiba360:proxy:gen:{user:42}", "katiba360:proxy:epoch"),
    ("SET", b"k\x00\xff", b"", "NX", "PX", 1000),
    ("EVALSHA", "abc", 2, "k1", "k2", 3600, 1.5, "caf\u00e9 \U0001f4dc"),
    ("PING",),
])
def test_hiredis_packs_like_the_python_encoder(args):
    assert pack_command(args) == _pack_command(args)
