"""The bounded memos (proxy/core/memo.py) and the memos built on them: at their limit they forget their
oldest entries one at a time, never everything at once."""
from __future__ import annotations

import time

import jwt
import pytest

from proxy.core import entry as entry_module
from proxy.core import memo as memo_module
from proxy.core.entry import Entry, decode_entry
from proxy.core.identity import IdentityConfig, Verifier
from proxy.core.memo import Memo, SizedMemo
from proxy.core.policy import Lookup, RequestView, classify
from proxy.core.rulesfile import load_rules
from proxy.serve import framing
from tests.functional.conftest import RULES_PATH, SECRET, mint
from tests.unit.entry_shapes import SHAPES as ENTRY_SHAPES
from tests.unit.entry_shapes import stored as stored_entry


def test_a_full_memo_forgets_its_oldest_entry_only():
    memo = Memo(3)
    for key in "abcd":
        assert memo.put(key, key.upper()) == key.upper()
    assert list(memo.items()) == [("b", "B"), ("c", "C"), ("d", "D")]
    assert memo.get("a") is None and memo.get("d") == "D"


def test_a_sized_memo_keeps_its_total_within_its_share_of_the_budget_and_counts_what_it_forgets(monkeypatch):
    monkeypatch.setattr(memo_module, "_budget", [20])
    memo = SizedMemo("test", 0.5, lambda key, value: len(value))
    memo.put("a", b"xxxx")
    memo.put("b", b"yyyy")
    memo.put("a", b"xxxx")  # already there: counted once
    assert memo.size == 8
    memo.put("c", b"zzzz")  # 12 > 10: the oldest goes
    assert list(memo) == ["b", "c"] and memo.size == 8
    memo.put("big", b"w" * 10)  # alone it fits: everything older goes
    assert list(memo) == ["big"] and memo.size == 10
    memo.put("huge", b"w" * 11)  # it never fits: not kept, nothing forgotten for it
    assert list(memo) == ["big"] and memo.size == 10
    memo.clear()
    assert memo.size == 0 and not memo


def test_a_smaller_budget_shrinks_every_memo_at_its_next_put(monkeypatch):
    monkeypatch.setattr(memo_module, "_budget", [100])
    heads, entries = SizedMemo("a", 0.5, lambda k, v: len(v)), SizedMemo("b", 0.3, lambda k, v: len(v))
    for i in range(10):
        heads.put(i, b"h" * 5)
        entries.put(i, b"e" * 5)
    assert (len(heads), len(entries)) == (10, 6)  # 50 and 30 bytes
    memo_module.set_budget(20)
    heads.put("new", b"h" * 5)
    entries.put("new", b"e" * 5)
    assert (heads.size, entries.size) == (10, 5) and list(heads) == [9, "new"] and list(entries) == ["new"]
    memo_module.set_budget(-1)  # nothing kept, nothing refused
    assert heads.put("x", b"") == b"" and memo_module.budget() == 0


def test_the_memo_budget_setting_defaults_to_256_mib():
    from proxy.serve.config import config_from

    assert config_from(None, {}).memo_max_bytes == 256 << 20 == memo_module.DEFAULT_BUDGET
    assert config_from(None, {"MEMO_MAX_BYTES": str(3 << 20)}).memo_max_bytes == 3 << 20


def test_the_verifier_forgets_its_oldest_tokens_and_still_verifies_them_again(monkeypatch):
    decoded = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda token, *a, **kw: decoded.append(token) or real_decode(token, *a, **kw))
    verifier = Verifier(IdentityConfig(secrets=(SECRET,)), cache_size=2)
    tokens = [mint(f"user-{i}", ttl=600) for i in range(3)]
    for token in tokens:
        verifier.verify(token)
    assert verifier.verify(tokens[2]).user_id == "user-2" and len(decoded) == 3  # remembered
    assert verifier.verify(tokens[0]).user_id == "user-0" and decoded[3:] == [tokens[0]]  # forgotten: again


def test_read_decisions_past_the_memo_budget_keep_the_recent_ones(monkeypatch):
    rules = load_rules(RULES_PATH)
    one = rules.memo._size_of(("/api/v1/users/profile", ""), None)
    monkeypatch.setattr(memo_module, "_budget", [int(2 * one / rules.memo.share) + 1])  # room for two
    verifier = Verifier(IdentityConfig(secrets=(SECRET,)))
    path = "/api/v1/users/profile"
    seen = []
    for user in ("u1", "u2", "u3"):
        identity = verifier.verify(mint(user, ttl=600))
        decision = classify(RequestView("GET", path, "", {}), rules, identity, None)
        assert isinstance(decision, Lookup) and user in decision.key
        seen.append(decision)
    assert len(rules.memo) == 2
    again = classify(RequestView("GET", path, "", {}), rules, verifier.verify(mint("u3", ttl=600)), None)
    assert again is seen[2]  # still remembered: the same object


def test_decoded_entries_past_the_byte_budget_forget_the_oldest(monkeypatch):
    monkeypatch.setattr(memo_module, "_budget", [12_000])
    monkeypatch.setattr(entry_module, "_DECODED", SizedMemo("entries", 0.25, entry_module._decoded_size))  # 3,000 bytes
    raws = [Entry(200, (("Content-Type", "application/json"),), b"x" * 900, time.time(), (), "f", f'"{i}"').encode()
            for i in range(4)]
    decoded = [decode_entry(raw) for raw in raws]
    assert raws[0] not in entry_module._DECODED and raws[3] in entry_module._DECODED
    assert decode_entry(raws[3]) is decoded[3]  # kept: the same object
    assert decode_entry(raws[0]) == decoded[0] and decode_entry(raws[0]) is not decoded[0]  # parsed again


@pytest.mark.parametrize("headers,body_len", ENTRY_SHAPES)
def test_a_decoded_entry_counts_what_it_keeps_alive(headers, body_len, monkeypatch):
    """MEMO_MAX_BYTES is sized from what each memo counts: a decoded entry counted its stored bytes, its
    body and 384 bytes, about two thirds of what it kept alive once its head was rendered."""
    import tracemalloc

    monkeypatch.setattr(memo_module, "_budget", [1 << 40])
    monkeypatch.setattr(entry_module, "_DECODED", SizedMemo("entries", 1.0, entry_module._decoded_size))
    stored = [bytearray(stored_entry(headers, body_len)[1]) for _ in range(2000)]  # as read off a socket
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in stored:
            framing.entry_head(decode_entry(bytes(raw)))  # the memo keeps the bytes; the first hit renders
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = entry_module._DECODED.size
    assert len(entry_module._DECODED) == len(stored)
    assert 0.9 * counted <= real <= 1.1 * counted, (real / len(stored), counted / len(stored))


def test_framed_heads_past_the_budget_keep_the_recent_ones(monkeypatch):
    heads = [b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)]
    room_for_two = int(2 * framing._framed_size(heads[0], None) / framing.FRAMED_SHARE) + 1
    monkeypatch.setattr(memo_module, "_budget", [room_for_two])
    monkeypatch.setattr(framing, "_FRAMED", framing.SizedMemo("heads", framing.FRAMED_SHARE, framing._framed_size))
    framed = [framing.frame(bytearray(raw)) for raw in heads]
    assert list(framing._FRAMED) == heads[1:]
    assert framing.frame(bytearray(heads[2])) is framed[2]
