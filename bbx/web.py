"""The HTTP side of both roles: a Twisted Web resource tree with /metrics and /healthz.

    /metrics   Prometheus text (bbx/metrics.py Registry.render())
    /healthz   200 "ok" while the role is healthy, 503 and the reason otherwise

Each role builds its tree (bbx/master/http.py, bbx/slave/http.py) on `root()`, which leaves
room for more pages (a dashboard) beside these two. Every request is answered from memory at
once: nothing here waits on a peer.
"""

from __future__ import annotations

from typing import Callable

from twisted.web import resource, server

from bbx.metrics import CONTENT_TYPE, Registry

# Requests larger than this are refused: the tree only answers GETs (every input from a peer
# has a limit). Twisted Web's own header limits bound the rest.
MAX_REQUEST_BODY = 64 * 1024


class MetricsPage(resource.Resource):
    """GET /metrics: the registry in Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: Registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.registry.render().encode("utf-8")


class HealthPage(resource.Resource):
    """GET /healthz: `check()` returns None when healthy, else the reason (one line)."""

    isLeaf = True

    def __init__(self, check: Callable[[], str | None]):
        super().__init__()
        self.check = check

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        try:
            problem = self.check()
        except Exception as e:  # a health check that breaks is itself unhealthy
            problem = f"health check failed: {type(e).__name__}: {e}"
        if problem:
            request.setResponseCode(503)
            return f"unhealthy: {problem}\n".encode("utf-8")
        return b"ok\n"


class Root(resource.Resource):
    """The tree's root: lists its pages."""

    def getChild(self, path, request):
        if path == b"":  # "/" itself
            return self
        return super().getChild(path, request)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        names = sorted(n.decode() for n in self.children)
        return ("".join(f"/{n}\n" for n in names)).encode()


class _Request(server.Request):
    def handleContentChunk(self, data):
        if self.content is not None and self.content.tell() + len(data) > MAX_REQUEST_BODY:
            self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)


def url_of(address) -> str:
    """http://host:port/ for a listening TCP address (a wildcard becomes loopback)."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", b"")
        return "unix:" + (name.decode() if isinstance(name, bytes) else str(name))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{address.port}/" if ":" in host else f"http://{host}:{address.port}/"


def root(registry: Registry, check: Callable[[], str | None]) -> resource.Resource:
    """A tree with /metrics and /healthz; a role may putChild more."""
    top = Root()
    top.putChild(b"metrics", MetricsPage(registry))
    top.putChild(b"healthz", HealthPage(check))
    return top


def site(tree: resource.Resource) -> server.Site:
    """A quiet Site (no access log lines: scrapes every 15 s would drown the log)."""
    s = server.Site(tree)
    s.requestFactory = _Request
    s.noisy = False
    s.log = lambda request: None
    return s


def listen(reactor, description: str, tree: resource.Resource):
    """Serve `tree` on the Twisted server endpoint `description`; fires with the port."""
    from bbx.pb.endpoints import server_endpoint

    return server_endpoint(reactor, description).listen(site(tree))
