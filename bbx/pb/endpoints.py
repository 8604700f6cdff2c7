"""Endpoint strings, PB login, and the reasons a login or connection fails, in words.

Every listen and connect in bbx goes through Twisted endpoint strings, so `tcp:`, `ssl:`,
`tls:` and `unix:` all work (ARCHITECTURE.md, rules of the house).
"""

from __future__ import annotations

import socket

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.python.failure import Failure
from twisted.spread import pb

from bbx.pb.banana import FastBroker

DEFAULT_PORT = 9989

# TCP keepalive: probe after 10 s idle, every 5 s, give up after 3 misses — a dead peer is
# noticed by the kernel within ~25 s even when no application traffic flows.
TCP_KEEPIDLE = 10
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 3


def master_endpoint(master: str, *, use_tls: bool = False) -> str:
    """`host[:port]` or `[v6addr][:port]` -> a client endpoint string (default port 9989)."""
    text = master.strip()
    if not text or "://" in text:
        raise ValueError(f"master address {master!r} is not host[:port]")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"master address {master!r} has no host")
    port = port or str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"master address {master!r} has a bad port {port!r}")
    host = host.replace(":", r"\:")
    return f"{'tls' if use_tls else 'tcp'}:host={host}:port={port}"


def client_endpoint(reactor, description: str, tls=None):
    """A client endpoint from a Twisted endpoint string; ValueError names a bad string.

    `tls:` and `ssl:` strings get bbx's own TLS client, which checks the master's certificate
    as the TlsTrust `tls` says (bbx/pb/tls.py); a TlsTrust given for any other string is a
    ValueError too.
    """
    from bbx.pb import tls as tls_rules

    if tls_rules.kind_of(description) in tls_rules.TLS_KINDS:
        from bbx.pb.tlsclient import tls_endpoint

        return tls_endpoint(reactor, description, tls)
    tls_rules.check(description, tls)
    try:
        return clientFromString(reactor, description)
    except Exception as e:  # Twisted raises ValueError, KeyError, TypeError... for bad strings
        raise ValueError(f"bad connection string {description!r}: {e}") from None


def server_endpoint(reactor, description: str):
    """A server endpoint from a Twisted endpoint string; ValueError names a bad string."""
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        raise ValueError(f"bad listen endpoint {description!r}: {e}") from None


# Server endpoint kinds whose Twisted parser takes backlog= (listen(2)'s queue length).
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "unix")


def _fields(description: str) -> list[str]:
    """The colon-separated fields of an endpoint string (a backslash escapes a colon)."""
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def with_backlog(description: str, backlog: int) -> str:
    """`description` with backlog=`backlog` added, for the kinds that take one; a string
    that already names a backlog (the operator's choice) or another kind is left alone."""
    fields = _fields(description)
    if fields[0].strip().lower() not in _BACKLOG_KINDS:
        return description
    if any(f.strip().lower().startswith("backlog=") for f in fields[1:]):
        return description
    return f"{description}:backlog={int(backlog)}"


def enable_tcp_keepalive(transport) -> None:
    """Turn on SO_KEEPALIVE (with short Linux timers where available) on a TCP transport."""
    try:
        sock = transport.getHandle()
    except Exception:
        return
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", TCP_KEEPIDLE),
            ("TCP_KEEPINTVL", TCP_KEEPINTVL),
            ("TCP_KEEPCNT", TCP_KEEPCNT),
        ):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass


class LoginFailed(Exception):
    """A login that did not succeed, with a reason an operator can act on.

    `stage` names the step that failed: "connect" (resolve + TCP/TLS connect), "login" (the
    PB handshake and the login answer), or "" when unknown; `timed_out` says a deadline ended
    it; `failure` is what failed, for callers that word it their own way (the slave).
    """

    def __init__(self, reason: str, *, unauthorized: bool = False, unreachable: bool = False,
                 untrusted: bool = False, stage: str = "", timed_out: bool = False,
                 failure: Failure | None = None):
        super().__init__(reason)
        self.reason = reason
        self.unauthorized = unauthorized
        self.unreachable = unreachable
        self.untrusted = untrusted
        self.stage = stage
        self.timed_out = timed_out
        self.failure = failure


def explain(failure: Failure, description: str = "") -> LoginFailed:
    """Turn a connect or login failure into a LoginFailed with one clear sentence."""
    from bbx.pb.tls import TlsVerifyError

    where = f" {description}" if description else ""
    if failure.check(TlsVerifyError):
        return LoginFailed(f"refused the master at{where}: {failure.getErrorMessage()}",
                           untrusted=True)
    if failure.check(error.ConnectionRefusedError):
        return LoginFailed(f"nothing is listening at{where} (connection refused)", unreachable=True)
    if failure.check(error.DNSLookupError):
        return LoginFailed(f"cannot resolve the master's host{where}", unreachable=True)
    if failure.check(error.TimeoutError, error.ConnectingCancelledError):
        return LoginFailed(f"timed out connecting to{where}", unreachable=True)
    if failure.check(error.NoRouteError, error.ConnectError):
        return LoginFailed(f"cannot connect to{where}: {failure.getErrorMessage()}", unreachable=True)
    if failure.check(error.ConnectionDone, error.ConnectionLost, pb.PBConnectionLost):
        return LoginFailed(f"the connection to{where} closed during login", unreachable=True)
    if is_unauthorized(failure):
        return LoginFailed("the master refused the login: wrong name or password", unauthorized=True)
    message = failure.getErrorMessage()
    return LoginFailed(f"login to{where} failed: {message}")


# The errors a PB portal answers a wrong name or password with, as they arrive over PB.
UNAUTHORIZED = ("twisted.cred.error.UnauthorizedLogin", "twisted.cred.error.UnhandledCredentials")


def remote_type(failure: Failure) -> str:
    """The peer's qualified error type for an error that came over PB, else ''.

    Inside an inlineCallbacks `except`, a CopiedFailure has already been turned into a
    pb.RemoteError whose `remoteType` is all that is left of the original type. Python 2
    peers (Buildbot 0.8) send the type name as bytes.
    """
    value = failure.value
    if isinstance(value, pb.RemoteError):
        kind = value.remoteType
    elif isinstance(failure, pb.CopiedFailure):
        kind = failure.type
    else:
        return ""
    return kind.decode("utf-8", "replace") if isinstance(kind, bytes) else str(kind)


def is_unauthorized(failure: Failure) -> bool:
    """True when the master refused the login's name or password (remotely or locally)."""
    return remote_type(failure) in UNAUTHORIZED or bool(failure.check(*UNAUTHORIZED))


class ClientBroker(FastBroker):
    """A client Broker whose lost connection fails a login still waiting for the root object.

    PBClientFactory learns of a lost connection only through clientConnectionLost, which
    Twisted calls for connectors but never for endpoints; without this, a connection dropped
    before PB's version exchange (a refused TLS certificate, a peer that hangs up) would leave
    the login waiting forever instead of failing with the reason.
    """

    def connectionLost(self, reason):
        super().connectionLost(reason)
        factory = getattr(self, "factory", None)
        if isinstance(factory, pb.PBClientFactory):
            factory.clientConnectionLost(None, reason)


class KeepaliveClientFactory(pb.PBClientFactory):
    """A PBClientFactory that turns on TCP keepalive as soon as the connection is made.

    Its brokers use the faster Banana codec of bbx/pb/banana.py (same wire format).
    """

    protocol = ClientBroker

    def clientConnectionMade(self, broker):
        enable_tcp_keepalive(broker.transport)
        super().clientConnectionMade(broker)


@defer.inlineCallbacks
def login(reactor, description: str, username: str, password: str, mind=None, *,
          timeout: float = 10.0, login_timeout: float | None = None, factory=None,
          connected=None, tls=None):
    """Connect to `description` and log in; fire with (perspective, broker).

    The one login routine of bbx: the CLI and the slave (bbx/slave/connection.py) both use it.
    `timeout` bounds the connect (name resolution, TCP, TLS); `login_timeout` (default: the
    same) bounds the PB handshake and the login answer, so a port that accepts connections
    but never speaks PB cannot hold the caller forever. `factory` is the KeepaliveClientFactory
    to use (the slave's notes what it receives); `connected(broker)` is called once the
    connection is up, before the login goes out.

    The mind (a Referenceable or None) is serviced by the reactor while the login call is
    still pending — the master calls it inside `respond` (docs/protocol.md §4.1).
    `tls` (a bbx.pb.tls.TlsTrust) says how a `tls:` / `ssl:` master's certificate is checked.
    Errbacks with LoginFailed for every expected failure.
    """
    endpoint = client_endpoint(reactor, description, tls)
    factory = factory if factory is not None else KeepaliveClientFactory()
    connecting = endpoint.connect(factory)
    timer = reactor.callLater(timeout, connecting.cancel)
    try:
        broker = yield connecting
    except Exception:
        failure = Failure()
        failed = explain(failure, description)
        failed.stage, failed.failure = "connect", failure
        if not timer.active():
            failed.timed_out = True
            failed.reason = f"no connection to {description} within {timeout:g} s (connect)"
        raise failed from None
    finally:
        if timer.active():
            timer.cancel()
    if connected is not None:
        connected(broker)
    creds = UsernamePassword(username.encode("utf-8"), password.encode("utf-8"))
    answering = factory.login(creds, client=mind)
    deadline = timeout if login_timeout is None else login_timeout
    expired = []

    def expire():
        expired.append(True)
        answering.cancel()

    login_timer = reactor.callLater(deadline, expire)
    try:
        perspective = yield answering
    except Exception:
        failure = Failure()
        if expired:
            broker.transport.abortConnection()
            raise LoginFailed(
                f"{description} accepted the connection but did not answer the PB login within "
                f"{deadline:g} s (login); is it a bbx or Buildbot PB port? (a TLS port needs a "
                "tls: endpoint)", unreachable=True, stage="login", timed_out=True,
                failure=failure) from None
        broker.transport.loseConnection()
        failed = explain(failure, description)
        failed.stage, failed.failure = "login", failure
        raise failed from None
    finally:
        if login_timer.active():
            login_timer.cancel()
    return perspective, broker
