"""The slave's HTTP tree (`bbx slave start --http ENDPOINT`): /metrics and /healthz.

/healthz is 200 while the slave is attached to its master, 503 with the last reason otherwise
(so a load balancer or a monitor sees a slave that cannot log in).
"""

from __future__ import annotations

from bbx import web

from . import metrics


def health(slave) -> str | None:
    if slave.connection.attached:
        return None
    state = slave.state.current if slave.state is not None else {}
    detail = state.get("detail") or state.get("state") or "not attached yet"
    return f"not attached to the master: {detail}"


def listen(slave, reactor, description: str):
    """Serve the slave's tree on `description`; fires with the port."""
    metrics.bind(slave)
    return web.listen(reactor, description, web.root(metrics.REGISTRY, lambda: health(slave)))
