"""The backend clients behind one seam, ``Upstream``: the lean HTTP/1.1 client every request goes through
(``http1``) and aiohttp's, for WebSockets (``wsinterim`` keeps the 1xx before their 101), with their
connection pools, the upstream slots, resends of requests that never reached the backend (``resend``) and the plain naming,
counting and logging of backend failures (``failures``). It may import ``proxy.core`` only.
"""
from .client import Upstream, UpstreamConfig

__all__ = ["Upstream", "UpstreamConfig"]
