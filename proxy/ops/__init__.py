"""Operations: everything that runs the proxy rather than serves a request.

Owns the ``cache-proxy`` CLI (cli.py) and its parser, the process runner (listeners, signals, drain, the
rules watcher), ``--workers N`` supervision, the admin listener, log setup and the generated configuration
reference. It may import every other sub-package (serve, store, upstream, core); nothing imports it
except ``proxy/__main__.py``.
"""
