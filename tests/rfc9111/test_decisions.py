"""Tables for the pure decisions of ``proxy/core/httpcache.py`` (no proxy, no store), one row per rule of
RFC 9111 they enforce: parsing (§5.2, §1.2.2, RFC 9110 §5.6.7), freshness (§4.2.1, §4.2.2), age (§4.2.3),
reuse (§4, §5.2.1, §5.2.2, RFC 5861), storing (§3, §3.5), 304 selection and update (§4.3.4), keys (§4,
§4.1) and invalidation targets (§4.4)."""
from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.core import httpcache as hc

NOW = 1_700_000_000.0
DATE = hc.format_http_date(NOW)


def H(*pairs: tuple[str, str], **fields: str) -> CIMultiDict:
    out = CIMultiDict(pairs)
    for name, value in fields.items():
        out.add(name.replace("_", "-"), value)
    return out


@pytest.mark.parametrize("values, expected", [
    (["max-age=60"], {"max-age": "60"}),
    (["Max-Age=60, PUBLIC"], {"max-age": "60", "public": None}),
    (['no-cache="Set-Cookie, X-A", max-age=5'], {"no-cache": "Set-Cookie, X-A", "max-age": "5"}),
    (["max-age=1", "max-age=2"], {"max-age": "1"}),  # §4.2.1: the first occurrence
    ([' , ,max-age=3 ,, private'], {"max-age": "3", "private": None}),
    (["max-age =3, public"], {"public": None}),  # whitespace around "=": not a directive
    (["max-age= 3"], {}),
    (['foo="a\\"b", bar'], {"foo": 'a"b', "bar": None}),
    (["max-age=\"7\""], {"max-age": "7"}),
])
def test_5_2_parse_directives(values, expected):
    assert hc.parse_directives(values) == expected


@pytest.mark.parametrize("arg, expected", [("0", 0), ("60", 60), ("-1", None), ("1.5", None), ("", None),
                                           (None, None), ("99999999999999", hc.DELTA_MAX), ("٣", None),
                                           ("9" * 5000, hc.DELTA_MAX)])  # past int()'s digit limit
def test_1_2_2_delta_seconds(arg, expected):
    assert hc.delta_seconds(arg) == expected


@pytest.mark.parametrize("text", ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                                  "Sun Nov  6 08:49:37 1994",
                                  # RFC 9111 §4.2: matched case-insensitively; cache-tests' optimal
                                  # freshness-expires-wrong-case-*: a date in the wrong case still counts
                                  "SUN, 06 Nov 1994 08:49:37 GMT", "Sun, 06 NOV 1994 08:49:37 gmt",
                                  "sunday, 06-nov-94 08:49:37 GMT"])
def test_rfc9110_5_6_7_three_date_formats(text):
    assert hc.parse_http_date(text) == 784111777.0


@pytest.mark.parametrize("text", ["0", "-1", "yesterday", "", "Sun, 06 Nov 1994", "Sun, 06 Nov 1994 08:49:37 UTC",
                                  "\u017fun, 06 Nov 1994 08:49:37 GMT",  # a long s: case-folds to "s", not ASCII
                                  "Sun, 06 Nov 1994 8:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 +0100"])
def test_5_3_invalid_dates(text):
    assert hc.parse_http_date(text) is None


@pytest.mark.parametrize("status, headers, heuristic, lifetime", [
    (200, H(Date=DATE, Cache_Control="s-maxage=5, max-age=50"), False, 5),
    (200, H(Date=DATE, Cache_Control="max-age=50", Expires=hc.format_http_date(NOW + 500)), False, 50),
    (200, H(Date=DATE, Expires=hc.format_http_date(NOW + 500)), False, 500),
    (200, H(Date=DATE, Expires=hc.format_http_date(NOW - 500)), False, 0),
    (200, H(Date=DATE, Expires="0"), False, 0),
    (200, H(Date=DATE, Last_Modified=hc.format_http_date(NOW - 1000)), False, 0),
    (200, H(Date=DATE, Last_Modified=hc.format_http_date(NOW - 1000)), True, 100),
    (200, H(Date=DATE, Last_Modified=hc.format_http_date(NOW - 10 ** 8)), True, hc.HEURISTIC_CAP),
    (500, H(Date=DATE, Last_Modified=hc.format_http_date(NOW - 1000)), True, 0),
    (302, H(Date=DATE, Cache_Control="public", Last_Modified=hc.format_http_date(NOW - 1000)), True, 100),
    (200, H(Date=DATE, Cache_Control="max-age=x", Last_Modified=hc.format_http_date(NOW - 1000)), True, 0),
], ids=["s-maxage", "max-age-over-expires", "expires", "expires-past", "expires-invalid", "no-heuristic",
        "heuristic-10pct", "heuristic-cap", "heuristic-status", "heuristic-public", "invalid-not-heuristic"])
def test_4_2_1_and_4_2_2_freshness_lifetime(status, headers, heuristic, lifetime):
    assert hc.freshness_lifetime(status, headers, heuristic) == lifetime


@pytest.mark.parametrize("headers, request_time, response_time, age", [
    (H(Date=DATE), NOW, NOW, 0),
    (H(Date=DATE, Age="30"), NOW, NOW, 30),
    (H(Date=DATE, Age="30"), NOW, NOW + 5, 35),  # corrected_age_value adds the response delay
    (H(Date=hc.format_http_date(NOW - 100), Age="30"), NOW, NOW, 100),  # apparent_age is larger
    (H(Date=hc.format_http_date(NOW + 100)), NOW, NOW, 0),
    (H(Date=DATE, Age="junk"), NOW, NOW, 0),  # §5.1, cache-tests age-parse-nonnumeric: ignored
    (H(Date=DATE, Age="7200, 0"), NOW, NOW, 7200),  # a list: its first member (age-parse-suffix)
    (H(Date=DATE, Age="0, 7200"), NOW, NOW, 0),  # age-parse-prefix
])
def test_4_2_3_corrected_initial_age(headers, request_time, response_time, age):
    assert hc.corrected_initial_age(headers, request_time, response_time) == age


R = hc.RequestDirectives


@pytest.mark.parametrize("cc, age, req, action, on_error", [
    ("max-age=60", 10, R(), "fresh", False),
    ("max-age=60", 70, R(), "validate", False),
    ("max-age=60, stale-while-revalidate=30", 80, R(), "swr", False),
    ("max-age=60, stale-while-revalidate=30", 95, R(), "validate", False),
    ("max-age=60, stale-if-error=30", 80, R(), "validate", True),
    ("max-age=60, stale-if-error=30", 95, R(), "validate", False),
    ("max-age=60, must-revalidate, stale-if-error=30", 80, R(), "validate", False),
    ("max-age=60", 80, R(stale_if_error=30), "validate", True),
    ("max-age=60", 80, R(max_stale=30), "stale", False),
    ("max-age=60, proxy-revalidate", 80, R(max_stale=30), "validate", False),
    ("s-maxage=60", 80, R(max_stale=30), "validate", False),
    ("no-cache, max-age=60", 1, R(), "validate", False),
    ('no-cache="X-A", max-age=60', 1, R(), "fresh", False),
    ("max-age=60", 10, R(no_cache=True), "validate", False),
    ("max-age=60", 10, R(max_age=0), "validate", False),
    ("max-age=60", 10, R(max_age=5), "validate", False),
    ("max-age=60", 10, R(max_age=20), "fresh", False),
    ("max-age=60", 10, R(min_fresh=55), "validate", False),
    ("max-age=60, x-unknown=1", 10, R(), "fresh", False),
])
def test_4_reuse_of_a_stored_response(cc, age, req, action, on_error):
    reuse = hc.evaluate(200, H(Date=DATE, Cache_Control=cc), NOW - age, NOW, req, heuristic=False)
    assert (reuse.action, reuse.stale_if_error) == (action, on_error)


@pytest.mark.parametrize("headers", [{}, {"Pragma": "no-cache"}, {"Cache-Control": "no-cache"}])
def test_5_4_pragma_only_without_cache_control(headers):
    assert hc.request_directives(H(**{k.replace("-", "_"): v for k, v in headers.items()})).no_cache is bool(headers)
    assert not hc.request_directives(H(Pragma="no-cache", Cache_Control="max-stale")).no_cache


@pytest.mark.parametrize("method, status, request_headers, headers, heuristic, refusal", [
    ("GET", 200, H(), H(Cache_Control="max-age=5"), False, None),
    ("HEAD", 200, H(), H(Cache_Control="max-age=5"), False, "method"),
    ("GET", 206, H(), H(Cache_Control="max-age=5"), False, "status"),
    ("GET", 304, H(), H(Cache_Control="max-age=5"), False, "status"),
    ("GET", 200, H(), H(Cache_Control="no-store, max-age=5"), False, "no-store"),
    ("GET", 200, H(Cache_Control="no-store"), H(Cache_Control="max-age=5"), False, "no-store-request"),
    ("GET", 200, H(), H(Cache_Control="private, max-age=5"), False, "private"),
    ("GET", 200, H(), H(Cache_Control='private="X-A", max-age=5'), False, None),
    ("GET", 200, H(Authorization="x"), H(Cache_Control="max-age=5"), False, "authorization"),
    ("GET", 200, H(Authorization="x"), H(Cache_Control="public, max-age=5"), False, None),
    ("GET", 200, H(Authorization="x"), H(Cache_Control="s-maxage=5"), False, None),
    ("GET", 200, H(Authorization="x"), H(Cache_Control="must-revalidate, max-age=5"), False, None),
    ("GET", 200, H(), H(Cache_Control="max-age=5", Vary="*"), False, "vary-star"),
    ("GET", 200, H(), H(ETag='"a"'), False, "no-freshness"),
    ("GET", 200, H(), H(ETag='"a"'), True, None),
    ("GET", 200, H(), H(ETag='"a"', Cache_Control="no-cache"), False, None),
    ("GET", 200, H(), H(Cache_Control="must-understand, no-store, max-age=5"), False, None),
    ("GET", 299, H(), H(Cache_Control="must-understand, no-store, max-age=5"), False, "must-understand"),
    ("GET", 500, H(), H(Cache_Control="max-age=5"), False, None),
])
def test_3_refuse_to_store(method, status, request_headers, headers, heuristic, refusal):
    assert hc.refuse_to_store(method, status, request_headers, headers, heuristic) == refusal


@pytest.mark.parametrize("stored, fresh, selected", [
    (H(ETag='"a"'), H(ETag='"a"'), True),
    (H(ETag='"a"'), H(ETag='"b"'), False),
    (H(ETag='W/"a"'), H(ETag='W/"a"'), True),
    (H(ETag='W/"a"'), H(ETag='"a"'), False),  # a strong validator never matches a weak stored one
    (H(), H(ETag='"a"'), False),
    (H(Last_Modified=DATE), H(Last_Modified=DATE), True),
    (H(Last_Modified=DATE), H(Last_Modified=hc.format_http_date(NOW + 1)), False),
    (H(ETag='"a"'), H(), True),
])
def test_4_3_4_which_stored_response_a_304_selects(stored, fresh, selected):
    assert hc.selects(stored, fresh) is selected


def test_4_3_4_update_replaces_fields_but_not_content_length():
    stored = (("Date", DATE), ("Cache-Control", "max-age=5"), ("X-A", "1"), ("X-A", "2"), ("Content-Type", "text/a"))
    fresh = H(("Cache-Control", "max-age=9"), ("X-A", "3"), ("Content-Length", "0"), ("Connection", "close"))
    updated = CIMultiDict(hc.updated_headers(stored, fresh, NOW + 10))
    assert updated.getall("X-A") == ["3"] and updated["Cache-Control"] == "max-age=9"
    assert updated["Content-Type"] == "text/a" and "Content-Length" not in updated
    assert updated["Date"] == hc.format_http_date(NOW + 10)  # the 304 had none: its arrival


def test_3_1_stored_fields():
    kept = CIMultiDict(hc.stored_headers(H(("Connection", "X-Hop"), ("X-Hop", "1"), ("Age", "5"),
                                           ("Cache-Control", 'no-cache="X-B", private="X-C"'),
                                           ("X-B", "b"), ("X-C", "c"), ("X-D", "d")), NOW))
    assert set(k.lower() for k in kept) == {"cache-control", "x-d", "date"}


@pytest.mark.parametrize("a, b, same", [
    (("http", "Example.COM:80", "/a%7eb?q"), ("http", "example.com", "/a~b?q"), True),
    (("https", "example.com:443", "/"), ("https", "example.com", ""), True),
    (("http", "example.com", "/a%2fb"), ("http", "example.com", "/a%2Fb"), True),
    (("http", "example.com", "/a%2Fb"), ("http", "example.com", "/a/b"), False),
    (("http", "example.com", "/a?x=1"), ("http", "example.com", "/a?X=1"), False),
    (("http", "example.com:8080", "/a"), ("http", "example.com", "/a"), False),
    (("http", "a.example", "/a"), ("http", "b.example", "/a"), False),
])
def test_4_cache_key_uri_normalisation(a, b, same):
    assert (hc.canonical_uri(*a) == hc.canonical_uri(*b)) is same


@pytest.mark.parametrize("values_a, values_b, same", [
    ({"accept": ["a, b"]}, {"accept": ["a,b"]}, True),
    ({"accept": ["a", "b"]}, {"accept": ["a, b"]}, True),
    ({"accept": ["a"]}, {"accept": ["b"]}, False),
    ({}, {"accept": [""]}, False),
])
def test_4_1_vary_digest(values_a, values_b, same):
    a = CIMultiDict((k, v) for k, vs in values_a.items() for v in vs)
    b = CIMultiDict((k, v) for k, vs in values_b.items() for v in vs)
    assert (hc.vary_digest(("accept",), a) == hc.vary_digest(("accept",), b)) is same


@pytest.mark.parametrize("method, status, locations, expected", [
    ("POST", 200, [], ["/x"]),
    ("GET", 200, ["/y"], []),
    ("POST", 404, ["/y"], []),
    ("POST", 500, [], []),
    ("DELETE", 303, ["/y", "z", "http://h.example/w?q=1"], ["/x", "/y", "/z", "/w?q=1"]),
    ("PUT", 201, ["http://other.example/y", "https://h.example/y", "http://h.example:81/y"], ["/x"]),
    ("FROB", 200, ["http://up.internal:9000/y"], ["/x", "/y"]),  # the upstream's own authority
])
def test_4_4_invalidation_targets(method, status, locations, expected):
    uris = hc.invalidation_uris(method, status, "http", "h.example", "/x", locations, aliases=("up.internal:9000",))
    assert uris == [hc.canonical_uri("http", "h.example", p) for p in expected]
