"""Stored entries: bodies at or above the rule's ``compress`` threshold are stored zstd-compressed and
read back byte for byte; a release without compression reads such an entry as absent, never as garbage."""
from __future__ import annotations

import random
import struct

import orjson
import pytest
import zstandard

from proxy.core import entry as entry_module
from proxy.core.entry import FORMAT_VERSION, Entry, _decode, decode_entry
from proxy.core.errors import RulesError
from proxy.core.rulesfile import parse_rules

BODY = orjson.dumps({"header": {"responseCode": 200, "responseMessage": "ok"},
                     "body": {"items": [{"id": i, "language_code": "sw", "created_at": "2026-12-05T12:19:38"}
                                        for i in range(20)]}})


def entry(body: bytes = BODY) -> Entry:
    return Entry(200, (("Content-Type", "application/json"),), body, 1_700_000_000.5, ("a" * 16, "b" * 16),
                 "0123456789ab", '"etag"')


def decode_before_compression(raw: bytes) -> Entry | None:
    """How a release that predates compression reads the store: only magic b"KC" is an entry."""
    magic, version, meta_len = struct.unpack_from(">2sBI", raw)
    if magic != b"KC" or version != FORMAT_VERSION:
        return None
    meta = orjson.loads(raw[7:7 + meta_len])
    return Entry(meta["s"], tuple(map(tuple, meta["h"])), raw[7 + meta_len:], meta["t"], tuple(meta["g"]),
                 meta["f"], meta["e"])


def test_a_body_at_the_threshold_is_stored_smaller_and_reads_back_exactly():
    raw = entry().encode(compress_from=len(BODY))
    assert len(raw) < len(entry().encode())
    assert _decode(raw, FORMAT_VERSION) == entry()


def test_a_body_under_the_threshold_or_with_compression_off_is_stored_as_before():
    assert entry().encode(compress_from=len(BODY) + 1) == entry().encode()
    assert entry().encode(compress_from=0) == entry().encode()
    assert decode_before_compression(entry().encode(compress_from=len(BODY) + 1)) == entry()


@pytest.mark.parametrize("size", [256, 1024, 8192])
def test_compression_never_stores_more_bytes_than_without_it(size):
    noise = entry(random.Random(size).randbytes(size))  # zstd cannot shrink random bytes
    raw = noise.encode(compress_from=1)
    assert len(raw) <= len(noise.encode())
    assert _decode(raw, FORMAT_VERSION) == noise


def test_a_release_without_compression_reads_a_compressed_entry_as_absent():
    raw = entry().encode(compress_from=1)
    assert decode_before_compression(raw) is None  # a miss for the old release, never a compressed body


@pytest.mark.parametrize("damage", ["truncated", "not-zstd", "claims-too-much"])
def test_a_damaged_compressed_entry_reads_as_absent(damage, monkeypatch):
    raw = entry().encode(compress_from=1)
    if damage == "truncated":
        raw = raw[:-5]
    elif damage == "not-zstd":
        raw = raw[:7] + b"plain bytes, not a zstd frame"
    else:
        monkeypatch.setattr(entry_module, "MAX_DECOMPRESSED", len(BODY))
    assert decode_entry(raw) is None


def test_a_compressed_entry_is_decompressed_once_per_process(monkeypatch):
    raw = entry(BODY + b" ").encode(compress_from=1)
    calls = []
    real = zstandard.ZstdDecompressor().decompress
    monkeypatch.setattr(entry_module, "_DECOMPRESSOR", type("Counting", (), {
        "decompress": staticmethod(lambda data: calls.append(1) or real(data))})())
    assert decode_entry(raw).body == BODY + b" "
    assert decode_entry(bytes(raw)).body == BODY + b" "  # the same stored bytes, read again
    assert len(calls) == 1


RULES = """\
version: 1
defaults: {compress: %s}
rules:
  - name: profile
    match: GET /api/v1/users/profile
    key: "user:{user_id}:profile"
"""


@pytest.mark.parametrize("value, expected", [("{min_bytes: 256}", 256), ("off", 0), ("false", 0)])
def test_rules_compress_field(value, expected):
    assert parse_rules(RULES % value).rules[0].compress_from == expected


def test_a_rule_without_compress_stores_as_before():
    assert parse_rules(RULES.replace("defaults: {compress: %s}\n", "")).rules[0].compress_from == 0


@pytest.mark.parametrize("value, message", [
    ("{min_bytes: 0}", "defaults.compress.min_bytes: must be a positive integer"),
    ("{}", "defaults.compress.min_bytes: required"),
    ("{min_bytes: 1, level: 9}", "defaults.compress.level: unknown field"),
    ("yes", "defaults.compress: must be {min_bytes: N} or off"),
])
def test_a_bad_compress_field_is_refused_with_its_line_once(value, message):
    with pytest.raises(RulesError) as caught:
        parse_rules(RULES % value, "rules.yaml")
    problems = [str(p) for p in caught.value.problems]
    assert [p for p in problems if message in p] == [p for p in problems if "compress" in p]
    assert len(problems) == 1 and problems[0].startswith("rules.yaml:2: ")
