"""The master's HTTP tree (`bbx master start --http ENDPOINT`, or `http` in master.toml).

/metrics serves bbx/master/metrics.py; /healthz answers 200 while the master listens and its
store writes, 503 naming the problem otherwise.
"""

from __future__ import annotations

from bbx import web

from . import metrics


def health(service) -> str | None:
    """None while `service` serves and its store writes; else why not."""
    if service.port is None:
        return "the master is not listening for slaves"
    store = service.store
    if not getattr(service, "_store_open", False):
        return "the store is not open"
    failing = getattr(store, "_failing", None)
    if failing is not None:
        return f"the store cannot write: {failing}"
    return None


def tree(service):
    """The resource tree for `service` (gauges bound to it)."""
    metrics.bind(service)
    return web.root(metrics.REGISTRY, lambda: health(service))


def listen(service, description: str):
    """Serve the tree on `description`; fires with the listening port."""
    return web.listen(service.reactor, description, tree(service))
