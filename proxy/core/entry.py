"""The stored form of a cached response, and its (de)serialisation.

Layout: ``b"KC"``, one format-version byte, a 4-byte big-endian metadata length, the metadata as JSON,
then the body bytes untouched (no re-serialisation on the hit path beyond slicing). An entry of another
format version, or one that does not parse, reads as absent: during a rolling upgrade an old and a new
proxy sharing one store each see the other's entries as misses, never as garbage.

An entry whose body has at least the rule's ``compress`` threshold is stored under the magic ``b"KZ"``:
the same head, then metadata and body as one zstd frame (compressed together, the headers shrink too). A release that predates compression checks the magic and so reads such an
entry as absent, never as a compressed body; this one reads both. Entries are decoded once per process
(``decode_entry``'s table), so a hot entry is decompressed once, not on every hit.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
import zstandard

from .memo import SizedMemo

FORMAT_VERSION = 1
_MAGIC = b"KC"
_MAGIC_COMPRESSED = b"KZ"
_HEAD = struct.Struct(">2sBI")
# Level 3 (zstd's default): on the katiba bodies level 1 and 6 differ from it by about 2% in size.
_COMPRESSOR = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=True)
_DECOMPRESSOR = zstandard.ZstdDecompressor()
MAX_DECOMPRESSED = 64 << 20  # an entry claiming more than this is not ours: read as absent


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # unix time, so every instance computes the same age
    generations: tuple[str, ...]  # tokens of the guarding namespaces, read before the origin fetch
    fingerprint: str  # of the rule that stored it (rules.Rule.fingerprint)
    etag: str
    # Derived once per decoded entry by the fast path (proxy/serve/framing.py, fastread.py) and kept with
    # it, since decoded entries are shared (``decode_entry``). Slots, not an instance dict: an entry is
    # held by the L1 and the decoded-entry memo by the hundred thousand, and a dict cost ~400 bytes each.
    wire_head: bytes | None = field(default=None, init=False, compare=False, repr=False)
    wire_dated: bool = field(default=False, init=False, compare=False, repr=False)
    wire_relocated: bool | None = field(default=None, init=False, compare=False, repr=False)

    def encode(self, version: int = FORMAT_VERSION, *, compress_from: int = 0) -> bytes:
        """The stored bytes; with ``compress_from`` > 0, a body of at least that many bytes is compressed
        when that makes it smaller."""
        meta = orjson.dumps({
            "s": self.status, "h": self.headers, "t": self.stored_at, "g": self.generations,
            "f": self.fingerprint, "e": self.etag,
        })
        if 0 < compress_from <= len(self.body):
            packed = _COMPRESSOR.compress(meta + self.body)
            if len(packed) < len(meta) + len(self.body):
                return _HEAD.pack(_MAGIC_COMPRESSED, version, len(meta)) + packed
        return _HEAD.pack(_MAGIC, version, len(meta)) + meta + self.body


# What a decoded entry keeps alive in the memo, by tracemalloc (tests/unit/test_memo.py checks it): the
# stored bytes (the memo's key), the body copied out of them, the Entry with its strings, and the head its
# first hit renders (proxy/serve/framing.py): each header's bytes twice and two tuples' worth of objects.
DECODED_OVERHEAD = 720
HEADER_OVERHEAD = 152


def header_footprint(entry: Entry) -> int:
    """Bytes a decoded entry's headers keep alive once its head is rendered (the memo's and L1's counts)."""
    return sum(2 * (len(name) + len(value)) + HEADER_OVERHEAD for name, value in entry.headers)


def _decoded_size(raw: bytes, entry: Entry) -> int:
    return len(raw) + len(entry.body) + DECODED_OVERHEAD + header_footprint(entry)


# Decoded entries by their stored bytes: a hot key is parsed once, not on every hit (entries are
# immutable, so sharing one is safe). A share of the memo budget (memo.set_budget); small entries only.
DECODED_SHARE = 0.40
_DECODED = SizedMemo("entries", DECODED_SHARE, _decoded_size)
_DECODED_MAX_ENTRY = 64 << 10


def decode_entry(raw: bytes | None, version: int = FORMAT_VERSION) -> Entry | None:
    if raw is None:
        return None
    cached = _DECODED.get(raw) if version == FORMAT_VERSION else None
    if cached is not None:
        return cached
    entry = _decode(raw, version)
    if entry is not None and version == FORMAT_VERSION and len(raw) <= _DECODED_MAX_ENTRY:
        _DECODED.put(raw, entry)
    return entry


def _decode(raw: bytes, version: int) -> Entry | None:
    if len(raw) < _HEAD.size:
        return None
    magic, found, meta_len = _HEAD.unpack_from(raw)
    if magic not in (_MAGIC, _MAGIC_COMPRESSED) or found != version:
        return None
    try:
        if magic == _MAGIC_COMPRESSED:
            packed = raw[_HEAD.size:]
            if not 0 <= zstandard.frame_content_size(packed) <= MAX_DECOMPRESSED:
                return None
            raw, start = _DECOMPRESSOR.decompress(packed), 0
        else:
            start = _HEAD.size
        if start + meta_len > len(raw):
            return None
        meta = orjson.loads(raw[start:start + meta_len])
        body = raw[start + meta_len:]
        return Entry(
            status=int(meta["s"]),
            headers=tuple((str(k), str(v)) for k, v in meta["h"]),
            body=body,
            stored_at=float(meta["t"]),
            generations=tuple(meta["g"]),
            fingerprint=str(meta["f"]),
            etag=str(meta["e"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, zstandard.ZstdError):
        return None
