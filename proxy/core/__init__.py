"""The pure core: what the proxy decides, with no sockets, no store and no aiohttp server.

Owns the rules and the rules file, cache keys, identity (JWT verification), the request policy (read,
write, bypass; what a write purges), the RFC 9111 decisions of the HTTP cache, stored entries and their
encoding, errors, the settings catalogue, metric names, the staleness auditor's bookkeeping and the pure
part of ``explain``. Everything here is unit-testable in microseconds. It may import the standard library
and pure third-party libraries (PyYAML, PyJWT, orjson, zstandard, prometheus-client), never another
sub-package of ``proxy``: store, upstream, serve and ops all build on it.
"""
