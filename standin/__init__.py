"""katiba-cache's stand-in backend: a small imitation of the katiba360 FastAPI service.

Owns nothing of the product: ``proxy/`` never imports this package. It runs as its own process
(``python -m standin --listen 127.0.0.1:0``) or in-process via ``build_app()`` for aiohttp's test
server. Layout: ``app.py`` routes/auth/envelope/middleware and the per-route version table,
``db.py`` sqlite storage and the global version counter, ``control.py`` the ``/_standin/`` test hooks,
``__main__.py`` the command line.
"""

# Demo HS256 secret (>= 32 bytes so PyJWT does not warn); overridden by env JWT_SECRET_KEY(_FILE).
DEFAULT_SECRET = "demo-secret-change-me-0123456789abcdef"
# Requests per caller per one-minute window; high so tests and benchmarks are never limited.
DEFAULT_RATE_LIMIT = 1_000_000

from .app import build_app  # noqa: E402  (needs the constants above)
from .control import STATE  # noqa: E402

__all__ = ["DEFAULT_SECRET", "DEFAULT_RATE_LIMIT", "STATE", "build_app"]
