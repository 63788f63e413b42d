"""The backend clients behind one seam, ``Upstream``: aiohttp's client (writes, bypasses, revalidations,
WebSockets) and the lean HTTP/1.1 client the fills use (``http1``), with their connection pools, the
upstream slots, resends of requests that never reached the backend (``resend``) and the plain naming,
counting and logging of backend failures (``failures``). It may import ``proxy.core`` only.
"""
from .client import Upstream, UpstreamConfig

__all__ = ["Upstream", "UpstreamConfig"]
