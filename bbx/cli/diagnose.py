"""The stages of `bbx doctor`, each a small Twisted conversation with its own deadline.

    resolve -> tcp -> tls (ssl:/tls: endpoints) -> pb -> login -> attach (as a slave)
            -> builders -> rtt -> clock

Each stage returns a Stage (ok or not, what it saw, and on failure the likely cause and the
fix); the first failure ends the run. The tls stage asks bbx/pb/tlsprobe.py, which shows the
certificate the master presents and checks it with the same TlsTrust (and the same checker) a
slave or the CLI uses, so its verdict is theirs; the later stages connect with that trust too.
"""

from __future__ import annotations

import socket
import statistics
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.spread import pb

from bbx.pb import clock
from bbx.pb.endpoints import KeepaliveClientFactory, client_endpoint, is_unauthorized, remote_type
from bbx.pb.tls import TlsVerifyError

from .errors import EXIT_UNREACHABLE, EXIT_UNTRUSTED
from .target import _split_endpoint, _unescape

# Round trips measured for the rtt stage (their median is reported).
RTT_SAMPLES = 5


@dataclass
class Stage:
    """One line of the diagnosis."""

    name: str
    ok: bool
    detail: str
    cause: str = ""
    fix: str = ""
    exit: int = 0  # the exit code when this stage is the one that failed
    seconds: float | None = None
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Who:
    """Whom doctor logs in as: a control user (operator) or a slave (with its basedir)."""

    endpoint: str
    name: str
    password: str
    slave: bool
    configured: dict | None = None  # from the master's master.toml when given: name -> password
    tls: Any = None  # the bbx.pb.tls.TlsTrust a tls:/ssl: master's certificate is checked with
    tags: tuple = ()  # the slave's own tags (slave.toml), offered as the real slave offers them


def endpoint_parts(endpoint: str) -> tuple[str, str | None, int | None]:
    """(kind, host or path, port) of a client endpoint string."""
    parts = _split_endpoint(endpoint)
    kind = parts[0].lower()
    keywords = {}
    positional = []
    for p in parts[1:]:
        if "=" in p.replace("\\=", ""):
            k, _, v = p.partition("=")
            keywords[k] = _unescape(v)
        else:
            positional.append(_unescape(p))
    if kind == "unix":
        return kind, keywords.get("path") or (positional[0] if positional else None), None
    host = keywords.get("host") or (positional[0] if positional else None)
    port = keywords.get("port") or (positional[1] if len(positional) > 1 else None)
    return kind, host, int(port) if port and port.isdigit() else None


def _elapsed(reactor, started: float) -> float:
    return reactor.seconds() - started


async def _bounded(d, reactor, timeout: float):
    d.addTimeout(timeout, reactor)
    return await d


async def resolve_stage(reactor, endpoint: str, timeout: float) -> Stage:
    from twisted.internet.threads import deferToThread

    kind, host, port = endpoint_parts(endpoint)
    if kind == "unix":
        import os

        if host and os.path.exists(host):
            return Stage("resolve", True, f"unix socket {host} exists")
        return Stage("resolve", False, f"no unix socket at {host}", "the master is not running, "
                     "or listens elsewhere", "start it (bbx master start DIR) or fix the path",
                     exit=3)
    if not host or port is None:
        return Stage("resolve", False, f"cannot tell host and port from {endpoint!r}",
                     "a malformed endpoint", "use host:port or tcp:host=H:port=P", exit=2)
    started = reactor.seconds()
    try:
        # getaddrinfo is what Twisted's own resolver runs in its thread pool.
        infos = await _bounded(deferToThread(socket.getaddrinfo, host, port, 0,
                                             socket.SOCK_STREAM), reactor, timeout)
    except defer.TimeoutError:
        return Stage("resolve", False, f"no answer for {host} within {timeout:g} s",
                     "the DNS server is slow or unreachable", "check /etc/resolv.conf", exit=3)
    except socket.gaierror as e:
        return Stage("resolve", False, f"cannot resolve {host}: {e.strerror}",
                     "a typo in the host name, or DNS does not know it",
                     "check the name (slave.toml connection or --master)", exit=3)
    addresses = sorted({info[4][0] for info in infos})
    return Stage("resolve", True, f"{host} -> {', '.join(addresses)}",
                 seconds=_elapsed(reactor, started), data={"addresses": addresses})


class _Bare(protocol.Protocol):
    """Connects and says nothing (the tcp stage)."""


async def tcp_stage(reactor, endpoint: str, timeout: float) -> Stage:
    kind, host, port = endpoint_parts(endpoint)
    plain = (f"unix:path={host}" if kind == "unix"
             else f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}")
    what = f"unix socket {host}" if kind == "unix" else f"{host}:{port}"
    started = reactor.seconds()
    try:
        proto = await _bounded(client_endpoint(reactor, plain).connect(
            protocol.Factory.forProtocol(_Bare)), reactor, timeout)
    except defer.TimeoutError:
        return Stage("tcp", False, f"no connection to {what} within {timeout:g} s",
                     "a firewall drops the packets, or the host is down",
                     "check the address and the firewall between the two hosts", exit=3)
    except Exception as e:
        from twisted.internet import error

        if isinstance(e, error.ConnectionRefusedError):
            return Stage("tcp", False, f"{what} refused the connection",
                         "nothing listens there: the master is not running, or on another port",
                         "start the master (bbx master start DIR); compare its listen with "
                         "this address", exit=3)
        return Stage("tcp", False, f"cannot connect to {what}: {e}", "the network",
                     "check the address and routes", exit=3)
    proto.transport.loseConnection()
    return Stage("tcp", True, f"connected to {what}", seconds=_elapsed(reactor, started))


async def tls_stage(reactor, endpoint: str, trust, timeout: float) -> Stage:
    """The TLS handshake on a tls:/ssl: endpoint: the certificate the master presents, and
    whether `trust` (how this side checks it) accepts it."""
    from bbx.pb import tlsprobe

    started = reactor.seconds()
    try:
        found = await tlsprobe.inspect(reactor, endpoint, trust, timeout)
    except defer.TimeoutError:
        return Stage("tls", False, f"no TLS handshake within {timeout:g} s",
                     "the port does not speak TLS (a plain PB port waits for the client)",
                     "use a tcp: endpoint for a plain port, or point at the master's TLS port",
                     exit=EXIT_UNREACHABLE)
    except Exception as e:
        text = str(e.value if isinstance(e, Failure) else e) or type(e).__name__
        return Stage("tls", False, f"TLS handshake failed: {text}",
                     "a plain (non-TLS) port, or a master that refuses this TLS version",
                     "use a tcp: endpoint for a plain port, or point at the master's TLS port",
                     exit=EXIT_UNREACHABLE)
    ok, detail, cause, fix = tlsprobe.summary(found)
    data = {"mode": found.mode, "certificate": found.certificate}
    return Stage("tls", ok, detail, cause, fix, exit=0 if ok else EXIT_UNTRUSTED,
                 seconds=_elapsed(reactor, started), data=data)


class DoctorBot(pb.Referenceable):
    """The mind doctor logs in with as a slave: it answers the attach sequence (docs/protocol.md
    §4.1) without taking builders, and records the builder list the master offers."""

    def __init__(self, tags=()):
        self.tags = list(tags)
        self.offered: list[str] | None = None
        self.messages: list[str] = []

    def remote_print(self, message=""):
        """Gets a message; returns None."""
        self.messages.append(str(message))

    def remote_getWorkerInfo(self):
        """Gets nothing; returns a minimal info dict that says who is asking."""
        import bbx

        info = {"admin": "bbx doctor", "host": socket.gethostname(), "version": bbx.__version__,
                "worker_commands": {}, "environ": {}}
        if self.tags:  # so the master offers the builders the slave's tags select
            info["tags"] = self.tags
        return info

    def remote_setBuilderList(self, wanted):
        """Gets [(name, builddir), ...]; takes none of them (returns {})."""
        self.offered = [str(item[0]) for item in wanted or ()]
        return {}

    def remote_shutdown(self):
        """Gets nothing; returns None."""


async def pb_stage(reactor, endpoint: str, timeout: float, trust=None):
    """Connect with PB (over TLS checked by `trust`) and fetch the root object."""
    factory = KeepaliveClientFactory()
    started = reactor.seconds()
    try:
        await _bounded(client_endpoint(reactor, endpoint, trust).connect(factory), reactor, timeout)
        root = await _bounded(factory.getRootObject(), reactor, timeout)
    except defer.TimeoutError:
        if factory._broker is not None:
            factory._broker.transport.abortConnection()
        return Stage("pb", False, f"connected, but no PB answer within {timeout:g} s",
                     "this port is not a bbx or Buildbot PB port (or is a TLS port reached "
                     "without TLS)", "check the port; a TLS port needs a tls: endpoint",
                     exit=3), None
    except TlsVerifyError as e:  # the tls stage passed, so the certificate changed since
        problem = e.problem
        return Stage("pb", False, f"the master's certificate {problem.what}", problem.cause,
                     problem.fix, exit=EXIT_UNTRUSTED), None
    except Exception as e:
        return Stage("pb", False, f"the PB handshake failed: {e}", "not a PB port",
                     "check the port", exit=3), None
    return Stage("pb", True, "PB root object received", seconds=_elapsed(reactor, started)), (
        factory, root)


def _refusal(who: Who, failure: Failure) -> Stage:
    kind = remote_type(failure)
    if "RejectedDuplicate" in kind or "duplicate" in failure.getErrorMessage().lower():
        return Stage("login", False, f"the master already has a live slave named {who.name}",
                     "another process logs in with this name (it answered the master's "
                     "liveness check)", "if it is this slave, all is well (bbx slave status "
                     "DIR); else give one of them another name", exit=4)
    if is_unauthorized(failure):
        role = "slave" if who.slave else "control user"
        configured = who.configured
        if configured is not None:
            if who.name not in configured:
                return Stage("login", False, f"refused: the master has no {role} named {who.name!r}",
                             "unknown name (per the master's master.toml)",
                             f"add it to master.toml ({'[[slaves]]' if who.slave else '[control] users'}) "
                             "and restart the master, or fix the name", exit=4)
            if configured[who.name] != who.password:
                return Stage("login", False, f"refused: wrong password for {role} {who.name!r}",
                             "the password differs from master.toml's",
                             "copy the password from master.toml into "
                             + ("slave.toml" if who.slave else "--password"), exit=4)
            return Stage("login", False, "refused, although name and password match master.toml",
                         "the running master uses an older master.toml",
                         "restart the master (bbx master restart DIR)", exit=4)
        return Stage("login", False, f"refused: unknown {role} name or wrong password",
                     "the master does not say which, so that a guesser learns nothing",
                     "on the master's host run `bbx doctor --master-dir DIR` (it compares with "
                     "master.toml), or look in its log for \"refused login as\"", exit=4)
    return Stage("login", False, f"login failed: {failure.getErrorMessage()}",
                 "the master raised an error", "see the master's log", exit=1)


async def login_stage(reactor, factory, who: Who, timeout: float):
    """Log in (as a slave: the attach sequence runs inside this call)."""
    from twisted.cred.credentials import UsernamePassword

    mind = DoctorBot(who.tags) if who.slave else None
    creds = UsernamePassword(who.name.encode("utf-8"), who.password.encode("utf-8"))
    started = reactor.seconds()
    try:
        # A duplicate is checked by pinging the other connection: up to 10 s (docs/protocol.md §2.4).
        perspective = await _bounded(factory.login(creds, client=mind), reactor, timeout + 10.0)
    except defer.TimeoutError:
        return Stage("login", False, f"no answer to the login within {timeout + 10:g} s",
                     "the master is overloaded or stuck", "see its log", exit=3), None, mind
    except Exception:
        return _refusal(who, Failure()), None, mind
    role = "slave" if who.slave else "control user"
    return (Stage("login", True, f"logged in as {role} {who.name}",
                  seconds=_elapsed(reactor, started)), perspective, mind)


async def rtt_stage(reactor, perspective, who: Who) -> Stage:
    method = "keepalive" if who.slave else "clock"
    samples = []
    for _ in range(RTT_SAMPLES):
        started = reactor.seconds()
        await _bounded(perspective.callRemote(method), reactor, 10.0)
        samples.append(reactor.seconds() - started)
    median = statistics.median(samples)
    return Stage("rtt", True, f"median {median * 1000:.2f} ms over {RTT_SAMPLES} calls "
                 f"(max {max(samples) * 1000:.2f} ms)", data={"median": median, "max": max(samples)})


async def clock_stage(reactor, perspective, limit: float) -> Stage:
    t1 = reactor.seconds()
    try:
        theirs = await _bounded(perspective.callRemote("clock"), reactor, 10.0)
    except Exception:
        return Stage("clock", True, "the master does not tell its clock (not a bbx master); "
                     "offset unknown", data={"offset": None})
    t4 = reactor.seconds()
    when = clock.peer_time(theirs)
    if when is None:
        return Stage("clock", True, "the master sent no clock; offset unknown", data={"offset": None})
    offset = clock.offset(t1, when, when, t4)
    text = (f"the master's clock is {abs(offset) * 1000:.1f} ms "
            f"{'ahead of' if offset >= 0 else 'behind'} this host's (± {(t4 - t1) * 500:.1f} ms)")
    if abs(offset) > limit:
        return Stage("clock", False, text, f"the clocks differ by more than {limit:g} s: build "
                     "timestamps will not agree", "run NTP (chrony, systemd-timesyncd) on both "
                     "hosts", exit=1, data={"offset": offset})
    return Stage("clock", True, text, data={"offset": offset})
