"""katiba-cache: a caching reverse proxy for the katiba360 API (import package ``proxy``)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
