"""Key templates: escaping of hostile values, injectivity (hypothesis), per-user namespace separation,
the "global" user id, hashing of long values, query and origin suffixes, template parse errors."""
from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.core.keys import (
    MAX_VALUE_CHARS, Source, TemplateError, escape_value, parse_template, render_origin_suffix, render_query_suffix,
)
from proxy.core.policy import guard_keys

PROFILE = parse_template("user:{user_id}:profile")
ACHIEVEMENT = parse_template("achievements:{user_id}:achievement:{achievement_id}", frozenset({"achievement_id"}))
USER_NS = parse_template("user:{user_id}")
ACH_NS = parse_template("achievements:{user_id}")
GLOBAL_NS = parse_template("achievements:global")
FORBIDDEN_IN_VALUE = set(":*{}|")
PERCENT_OK = re.compile(r"%(?:[0-9A-F]{2}|H[0-9a-f]{32}$)")


def values(user_id=None, **path):
    def lookup(src: Source):
        return user_id if src.kind == "identity" else path.get(src.name)
    return lookup


def value_part(rendered: str, index: int = 1) -> str:
    segment = rendered.split(":")[index]
    assert segment.startswith("{") and segment.endswith("}"), rendered
    return segment[1:-1]


def assert_clean(escaped: str) -> None:
    assert not FORBIDDEN_IN_VALUE & set(escaped), escaped
    assert re.fullmatch(r"[A-Za-z0-9._~%-]*", escaped), escaped
    # every % starts a two-hex-digit escape (or, once, the %H hash marker)
    assert len(PERCENT_OK.findall(escaped)) == escaped.count("%"), escaped


HOSTILE = [
    ("star", "*", "%2A"),
    ("question", "?", "%3F"),
    ("brackets", "[a]", "%5Ba%5D"),
    ("colon", ":", "%3A"),
    ("braces", "{x}", "%7Bx%7D"),
    ("pipe", "a|b", "a%7Cb"),
    ("backslash", "\\", "%5C"),
    ("percent", "%", "%25"),
    ("slash", "a/b", "a%2Fb"),
    ("space", "a b", "a%20b"),
    ("encoded-colon", "%3A", "%253A"),
    ("encoded-star-lower", "%2a", "%252a"),
    ("encoded-twice", "%253A", "%25253A"),
    ("glob-ns", "x:*", "x%3A%2A"),
    ("unicode", "é😀", "%C3%A9%F0%9F%98%80"),
    ("nul", "\x00", "%00"),
    ("newline", "a\r\nb", "a%0D%0Ab"),
    ("lone-surrogate", "\udcff", "%ED%B3%BF"),  # what a path's %FF decodes to (surrogateescape)
    ("unreserved", "Az09._~-", "Az09._~-"),
]


@pytest.mark.parametrize("raw, escaped", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_values_are_escaped(raw, escaped):
    assert escape_value(raw) == escaped
    rendered = PROFILE.render(values(raw))
    assert rendered == "user:{" + escaped + "}:profile"
    assert len(rendered.split(":")) == 3
    assert_clean(value_part(rendered))


@pytest.mark.parametrize("raw", ["a" * 10_000, "{" * 10_000, ":" * 10_000, "é" * 10_000, "%" * 43],
                         ids=["ascii", "braces", "colons", "unicode", "just-over"])
def test_long_values_are_hashed_to_a_bounded_length(raw):
    escaped = escape_value(raw)
    assert re.fullmatch(r"%H[0-9a-f]{32}", escaped)
    assert len(escaped) <= MAX_VALUE_CHARS
    assert_clean(value_part(PROFILE.render(values(raw))))


def test_the_hash_threshold_is_on_the_escaped_length():
    assert escape_value("a" * MAX_VALUE_CHARS) == "a" * MAX_VALUE_CHARS
    assert escape_value("a" * (MAX_VALUE_CHARS + 1)).startswith("%H")
    assert escape_value("%" * 42).startswith("%25")  # 126 escaped chars: kept
    assert escape_value("%" * 43).startswith("%H")  # 129: hashed


def test_distinct_long_values_differ():
    a, b = "x" * 10_000, "x" * 9_999 + "y"
    assert escape_value(a) != escape_value(b)
    assert escape_value(a) == escape_value("x" * 10_000)
    assert escape_value(a) != escape_value("x" * 10_001)


def test_empty_or_missing_value_renders_nothing():
    assert PROFILE.render(values("")) is None
    assert PROFILE.render(values(None)) is None
    assert ACHIEVEMENT.render(values("u1")) is None


def test_a_user_called_global_is_not_the_global_namespace():
    rendered = parse_template("achievements:{user_id}:leaderboard").render(values("global"))
    literal = parse_template("achievements:global:leaderboard").render(values(None))
    assert rendered == "achievements:{global}:leaderboard"
    # literal first two segments are the Redis Cluster hash tag: entry and guards share one slot
    assert literal == "{achievements:global}:leaderboard"
    assert rendered != literal
    assert ACH_NS.render(values("global")) == "achievements:{global}"
    assert GLOBAL_NS.render(values(None)) == "{achievements:global}"
    user_guards = guard_keys("p", rendered, (2, 3))
    global_guards = guard_keys("p", literal, (2, 3))
    assert user_guards[:2] == ("p:gen:achievements:{global}", "p:gen:achievements:{global}:leaderboard")
    assert global_guards[:2] == ("p:gen:{achievements:global}", "p:gen:{achievements:global}:leaderboard")
    assert global_guards[0] == "p:gen:" + GLOBAL_NS.render(values(None))  # the purge bumps what guards it
    assert user_guards[-1] == global_guards[-1] == "p:epoch"


@pytest.mark.parametrize("text, rendered, tag", [
    ("user:{user_id}:profile", "user:{u1}:profile", "u1"),
    ("achievements:{user_id}:achievement:{achievement_id}", "achievements:{u1}:achievement:{a9}", "u1"),
    ("achievements:global:types", "{achievements:global}:types", "achievements:global"),
    ("achievements:global", "{achievements:global}", "achievements:global"),
    ("leaderboard", "{leaderboard}", "leaderboard"),
    ("{user_id}:profile", "{u1}:profile", "u1"),
])
def test_every_key_and_its_guards_share_one_hash_tag(text, rendered, tag):
    template = parse_template(text, frozenset({"achievement_id"}))
    key = template.render(values("u1", achievement_id="a9"))
    assert key == rendered
    lengths = tuple(range(min(2, len(template.segments)), len(template.segments) + 1))
    for gen in guard_keys("p", key, lengths)[:-1]:  # the global epoch lives in no slot
        assert re.search(r"\{([^}]*)\}", gen).group(1) == tag, gen


# --------------------------------------------------------------------------- properties

_PIECES = [":", "*", "{", "}", "|", "%", "%3A", "%3a", "%25", "?", "[", "]", "\\", "/", " ", "\x00", "\udcff",
           "\ud800", "é", "😀", "global", "%H", "a" * 130]
# A few pieces per value (a per-character one_of makes hypothesis slow); pieces bring the hostile
# characters, surrogates and long runs that plain text rarely draws.
hostile_text = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.text(st.characters(exclude_categories=()), max_size=40)),
    min_size=1, max_size=6,
).map("".join).filter(bool)


@settings(max_examples=300, deadline=None, database=None)
@given(st.tuples(hostile_text, hostile_text), st.tuples(hostile_text, hostile_text))
def test_rendering_is_injective(a, b):
    assume(a != b)
    ka = ACHIEVEMENT.render(values(a[0], achievement_id=a[1]))
    kb = ACHIEVEMENT.render(values(b[0], achievement_id=b[1]))
    assert ka != kb
    assert len(ka.split(":")) == len(kb.split(":")) == 4


@settings(max_examples=300, deadline=None, database=None)
@given(hostile_text)
def test_escaped_values_are_clean_and_bounded(raw):
    escaped = escape_value(raw)
    assert_clean(escaped)
    assert 0 < len(escaped) <= MAX_VALUE_CHARS


@settings(max_examples=300, deadline=None, database=None)
@given(hostile_text, hostile_text)
def test_one_users_namespace_never_names_another_users_keys(a, b):
    assume(a != b)
    for ns in (USER_NS, ACH_NS):
        ns_a, ns_b = ns.render(values(a)), ns.render(values(b))
        assert ns_a != ns_b
        key_b = PROFILE.render(values(b)) if ns is USER_NS else ACHIEVEMENT.render(values(b, achievement_id="1"))
        assert not key_b.startswith(ns_a + ":")
        # the generation that guards B's key is B's, never A's
        assert guard_keys("p", key_b, (2,))[0] == f"p:gen:{ns_b}" != f"p:gen:{ns_a}"
    assert USER_NS.render(values(a)) != GLOBAL_NS.render(values(None))


# --------------------------------------------------------------------------- suffixes


def test_query_suffix_is_sorted_and_escaped():
    names = ("limit", "offset")
    assert render_query_suffix(names, {"offset": "0", "limit": "10"}) == "|q:limit=10&offset=0"
    assert render_query_suffix(names, {"limit": "10"}) == "|q:limit=10"
    assert render_query_suffix(names, {}) == ""
    smuggled = render_query_suffix(names, {"limit": "1&offset=2"})
    assert smuggled == "|q:limit=1%26offset%3D2" != render_query_suffix(names, {"limit": "1", "offset": "2"})
    assert render_query_suffix(names, {"limit": ""}) == "|q:limit="


def test_origin_suffix_is_exact_and_escaped():
    # exact: the backend echoes the forwarded bytes and browsers compare them byte for byte (issue 18)
    assert render_origin_suffix(None) == "" != render_origin_suffix("") == "|o:"
    assert render_origin_suffix("HTTPS://App.Example") == "|o:HTTPS%3A%2F%2FApp.Example"
    assert render_origin_suffix("https://APP.example") != render_origin_suffix("https://app.example")
    assert render_origin_suffix("https://a.example") != render_origin_suffix("https://b.example")
    assert render_origin_suffix("http://\udcff") == "|o:http%3A%2F%2F%ED%B3%BF"


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, params, allow_body, message", [
    ("", None, False, "non-empty"),
    ("User:{user_id}", None, False, "lower-case literal"),
    ("user:*", None, False, "lower-case literal"),
    ("user::x", None, False, "lower-case literal"),
    ("user:x{user_id}", None, False, "lower-case literal"),
    ("item:{item_id}", frozenset(), False, "not provided by the route"),
    ("item:{path.item_id}", frozenset({"id"}), False, "no path parameter"),
    ("item:{body.user_id}", frozenset(), False, "only in purge patterns"),
    ("item:{1bad}", None, False, "invalid name"),
])
def test_bad_templates_are_refused(text, params, allow_body, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        parse_template(text, params, allow_body)


def test_placeholder_alternatives_take_the_first_value():
    t = parse_template("user:{body.user_id|user_id}:stats", frozenset(), allow_body=True)
    assert [s.kind for s in t.sources] == ["body", "identity"] and t.needs_identity

    def lookup(body):
        return lambda src: body if src.kind == "body" else "caller"

    assert t.render(lookup("other")) == "user:{other}:stats"
    assert t.render(lookup(None)) == "user:{caller}:stats"
    assert t.render(lookup("")) == "user:{caller}:stats"


def test_namespaces_cover_keys_by_shape():
    assert USER_NS.covers(PROFILE) and not ACH_NS.covers(PROFILE)
    assert ACH_NS.covers(ACHIEVEMENT) and not GLOBAL_NS.covers(ACHIEVEMENT)
    assert GLOBAL_NS.covers(parse_template("achievements:global:types"))
    assert not PROFILE.covers(USER_NS)
