"""Redis in production: credentials and TLS files given apart from the URL, TLS contexts, Sentinel URLs.

One URL carries everything to every client the store opens (redis-py's pool, the probe connection, the
hit path's ``AutoPipeline``, the cluster client): ``resolve_redis_url`` folds ``REDIS_USERNAME``,
``REDIS_PASSWORD`` / ``REDIS_PASSWORD_FILE`` into the URL's userinfo and ``REDIS_CA_FILE``,
``REDIS_CLIENT_CERT``, ``REDIS_CLIENT_KEY`` into redis-py's query parameters (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``). What the URL already says wins.

Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``
(``rediss+sentinel://`` for TLS to the master and the sentinels). The store asks the sentinels for the
*master* of ``service_name`` and connects to it only: a replica is never read, because replication is
asynchronous and a replica can still hold a namespace generation that a purge has already replaced on
the master (serving from it would serve purged entries). Sentinels' own password: ``?sentinel_password=``
(and ``sentinel_username``).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..core.settings import setting

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_TLS_PARAMS = (("REDIS_CA_FILE", "ssl_ca_certs"), ("REDIS_CLIENT_CERT", "ssl_certfile"),
               ("REDIS_CLIENT_KEY", "ssl_keyfile"))
_TRUE = ("1", "true", "yes", "on", "y")


def resolve_redis_url(url: str | None, environ: dict[str, str]) -> str | None:
    """``url`` with the credentials and TLS files of ``environ`` folded in (the URL's own values win)."""
    if not url:
        return url
    username = setting(environ, "REDIS_USERNAME") or None
    password = setting(environ, "REDIS_PASSWORD") or None
    if password is None and setting(environ, "REDIS_PASSWORD_FILE"):
        path = setting(environ, "REDIS_PASSWORD_FILE")
        try:
            with open(path, encoding="utf-8") as fh:
                password = fh.read().strip() or None
        except OSError as exc:
            raise ValueError(f"REDIS_PASSWORD_FILE {path}: {exc.strerror or exc}") from None
    parts = urlsplit(url)
    netloc = parts.netloc
    if (username or password) and "@" not in netloc:
        userinfo = quote(username or "", safe="") + (":" + quote(password, safe="") if password else "")
        netloc = f"{userinfo}@{netloc}"
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "cluster" not in parts.scheme:  # the cluster client takes no TLS files in its URL
        for env_name, param in _TLS_PARAMS:
            value = setting(environ, env_name)
            if value and param not in params:
                params[param] = value
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(params), parts.fragment))


def check_tls_files(url: str | None) -> None:
    """ValueError naming the file when a CA, certificate or key in ``url`` cannot be loaded (start-up)."""
    if not url or not url.startswith(("rediss://", "rediss+sentinel://")):
        return
    tls_context(dict(parse_qsl(urlsplit(url).query)))


def tls_context(params: dict[str, str]) -> ssl.SSLContext:
    """An SSL context from redis-py's URL parameters: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_cert_reqs`` (none | optional | required, default required), ``ssl_check_hostname`` (default
    true with verification). The same settings redis-py's own connections use."""
    ca = params.get("ssl_ca_certs") or None
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Redis CA file {ca}: cannot load CA certificates: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    reqs = (params.get("ssl_cert_reqs") or "required").lower()
    check_hostname = (params.get("ssl_check_hostname") or "true").lower() in _TRUE
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_OPTIONAL if reqs == "optional" else ssl.CERT_REQUIRED
    certfile = params.get("ssl_certfile")
    if certfile:
        try:
            context.load_cert_chain(certfile, params.get("ssl_keyfile") or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"Redis client certificate {certfile}: cannot load it: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    ssl: bool
    params: dict  # the remaining query parameters (TLS files, sentinel_password, ...)


def parse_sentinel_url(url: str) -> SentinelURL:
    if not url.startswith(SENTINEL_SCHEMES):
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ValueError(f"Sentinel URL: expected host:port, got {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("Sentinel URL: name the service, e.g. redis+sentinel://sentinel:26379/mymaster/0")
    db = parts[1] if len(parts) > 1 else "0"
    if not db.isdigit():
        raise ValueError(f"Sentinel URL: the database must be a number, got {db!r}")
    return SentinelURL(tuple(sentinels), unquote(parts[0]), int(db), username, password,
                       scheme.startswith("rediss"), dict(parse_qsl(query)))
