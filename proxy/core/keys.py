"""Key and purge-pattern templates: parsing, rendering and escaping.

A template is a ``:``-separated list of segments, each either a literal (``user``, ``profile``) or one
placeholder (``{user_id}``, ``{achievement_id}``, ``{body.user_id|user_id}``). Rendering is injective:

* a placeholder's value is percent-escaped (everything outside ``[A-Za-z0-9._~-]``), so no value can
  contain ``:``, ``*``, ``{``, ``}``, ``|`` or ``%`` followed by anything but two hex digits; values
  longer than ``MAX_VALUE_CHARS`` after escaping become ``%H`` + a hash, which escaping cannot produce;
* the escaped value is wrapped in braces, so ``achievements:{global}`` (a user whose id is "global")
  never equals the literal ``achievements:global``. The first brace group is also the Redis Cluster
  hash tag, which puts every key of one user (``user:`` and ``achievements:``) in one slot;
* when a template's first two segments (or its only one) are literals, they are rendered wrapped in
  one pair of braces: ``{achievements:global}:leaderboard``, namespace ``{achievements:global}``. Every
  namespace has at least two segments, so an entry, every generation guarding it and its fill lease
  share one hash tag, hence one Redis Cluster slot (see ``assemble``). Values never contain ``:``, so
  ``{achievements:global}`` cannot be a rendered value and rendering stays injective.

A namespace is a purge pattern without its ``:*``; it covers a key template when its segments are a
prefix of the key's, placeholders lining up with placeholders. Purging bumps the namespace's
generation; the entries it covers record generations and stop matching (see ``policy.py``).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping
from urllib.parse import quote

MAX_VALUE_CHARS = 128
_LITERAL = re.compile(r"^[a-z0-9_][a-z0-9_-]*$")
_SOURCE = re.compile(r"^(?:(body|query|path)\.)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$")


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]{0,%d}" % MAX_VALUE_CHARS)


def escape_value(value: str) -> str:
    if _UNRESERVED.fullmatch(value):  # what quote leaves alone (user ids, most values): a tenth of its cost
        return value
    # surrogatepass: paths are decoded with surrogateescape and JSON allows lone surrogates; still injective
    escaped = quote(value, safe="-._~", errors="surrogatepass")
    if len(escaped) > MAX_VALUE_CHARS:
        return "%H" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return escaped


class TemplateError(ValueError):
    """A template is malformed; the message says why (rules.py adds file and line)."""


@dataclass(frozen=True)
class Source:
    """Where a placeholder value comes from: ``identity`` (user_id), ``path``, ``query`` or ``body``."""

    kind: str
    name: str  # for body: a dotted path

    @property
    def text(self) -> str:
        return self.name if self.kind in ("identity", "path") else f"{self.kind}.{self.name}"


@dataclass(frozen=True)
class Placeholder:
    alternatives: tuple[Source, ...]  # first one that resolves wins


Segment = str | Placeholder


@dataclass(frozen=True)
class Template:
    text: str
    segments: tuple[Segment, ...]

    @cached_property  # a rule's template, asked on every decision new to the memo
    def sources(self) -> tuple[Source, ...]:
        return tuple(a for s in self.segments if isinstance(s, Placeholder) for a in s.alternatives)

    @cached_property
    def needs_identity(self) -> bool:
        return any(src.kind == "identity" for src in self.sources)

    @cached_property
    def shape(self) -> tuple[str | None, ...]:
        """Literals kept, placeholders as None: two templates with one shape render alike."""
        return tuple(s if isinstance(s, str) else None for s in self.segments)

    def covers(self, key: "Template") -> bool:
        """True when this namespace is a prefix (or the whole) of ``key``."""
        return len(self.segments) <= len(key.segments) and key.shape[: len(self.segments)] == self.shape

    def render(self, values: Callable[[Source], str | None]) -> str | None:
        """The rendered key, or None when a placeholder has no value (the caller bypasses)."""
        parts = []
        for seg in self.segments:
            if isinstance(seg, str):
                parts.append(seg)
                continue
            value = None
            for alt in seg.alternatives:
                value = values(alt)
                if value is not None and value != "":
                    break
            if value is None or value == "":
                return None
            parts.append("{" + escape_value(value) + "}")
        return assemble(parts, self.segments)


def assemble(parts: list[str], segments: tuple[Segment, ...] | tuple[str | None, ...]) -> str:
    """Join rendered ``parts`` (placeholders already braced); ``segments`` (or a shape) tells which are
    literals. Literal first two segments (or a literal only segment) become the hash tag:
    ``{achievements:global}:types``. Splitting the result on ``:`` keeps one part per segment, so a
    prefix of ``n >= 2`` parts (``guard_keys``) is rendered exactly like the ``n``-segment namespace."""
    first_literal = isinstance(segments[0], str)
    if first_literal and (len(segments) == 1 or isinstance(segments[1], str)):
        parts = list(parts)
        parts[0] = "{" + parts[0]
        last = min(1, len(parts) - 1)
        parts[last] = parts[last] + "}"
    return ":".join(parts)



def parse_template(text: str, path_params: frozenset[str] | None = None, allow_body: bool = False) -> Template:
    """Parse ``text``; ``path_params`` (when given) are the names the route captures."""
    if not isinstance(text, str) or not text:
        raise TemplateError("must be a non-empty string")
    segments: list[Segment] = []
    for raw in text.split(":"):
        if raw.startswith("{") and raw.endswith("}"):
            segments.append(_parse_placeholder(raw[1:-1], path_params, allow_body))
        elif _LITERAL.match(raw):
            segments.append(raw)
        else:
            raise TemplateError(
                f"segment {raw!r} must be a lower-case literal ([a-z0-9_-]) or one whole {{placeholder}}"
            )
    return Template(text, tuple(segments))


def _parse_placeholder(inner: str, path_params: frozenset[str] | None, allow_body: bool) -> Placeholder:
    alternatives = []
    for alt in inner.split("|"):
        m = _SOURCE.match(alt.strip())
        if not m:
            raise TemplateError(f"placeholder {{{inner}}} has an invalid name {alt!r}")
        kind, name = m.group(1), m.group(2)
        if kind is None:
            if name == "user_id":
                kind = "identity"
            elif path_params is not None and name in path_params:
                kind = "path"
            else:
                known = ", ".join(sorted({"user_id", *(path_params or ())}))
                raise TemplateError(f"placeholder {{{alt}}} is not provided by the route (known: {known})")
        elif kind == "path" and path_params is not None and name not in path_params:
            raise TemplateError(f"placeholder {{{alt}}}: the route has no path parameter {name!r}")
        elif kind == "body" and not allow_body:
            raise TemplateError(f"placeholder {{{alt}}}: body values are allowed only in purge patterns")
        alternatives.append(Source(kind, name))
    return Placeholder(tuple(alternatives))


def render_query_suffix(names: tuple[str, ...], params: Mapping[str, str]) -> str:
    """``|q:limit=10&offset=0`` from the varied params present (sorted by name), or ``""``."""
    parts = [f"{escape_value(n)}={escape_value(params[n])}" for n in names if n in params]
    return "|q:" + "&".join(parts) if parts else ""


def render_origin_suffix(origin: str | None) -> str:
    """The key's part for an ``Origin`` field: its exact value, as forwarded (the backend echoes it into
    Access-Control-Allow-Origin and browsers compare byte for byte), present even when empty."""
    return "|o:" + escape_value(origin) if origin is not None else ""
