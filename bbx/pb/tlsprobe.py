"""Look at a TLS master's certificate and say whether a client would trust it, and if not why
(the TLS stage of `bbx doctor`).

Two handshakes: one that accepts any certificate, to show what the master presents (subject,
subjectAltName, expiry, fingerprint), and one with the client's real TlsTrust, through the
same checker a slave uses (bbx/pb/tlsclient.py), so the verdict is the slave's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from . import tls
from .tls import Problem, TlsTrust, TlsVerifyError


@dataclass
class Inspection:
    """What one look at a TLS master found."""

    mode: str  # how the client checks: pin, ca, system or insecure (bbx.pb.tls.check)
    certificate: dict | None  # tls.describe() of the certificate the master presented
    problem: Problem | None  # why the client would refuse it; None when it would accept it


@implementer(IHandshakeListener)
class _Handshake(protocol.Protocol):
    """Says nothing; fires `done` with the transport once the TLS handshake is over."""

    def __init__(self):
        self.done = defer.Deferred()

    def handshakeCompleted(self):
        if not self.done.called:
            self.done.callback(self.transport)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


async def _handshake(reactor, endpoint, timeout: float):
    """Connect and finish the TLS handshake within `timeout`; the transport, or raise."""
    attempt = defer.Deferred.fromCoroutine(_connect_and_shake(endpoint))
    attempt.addTimeout(timeout, reactor)
    return await attempt


async def _connect_and_shake(endpoint):
    proto = await endpoint.connect(protocol.Factory.forProtocol(_Handshake))
    return await proto.done


async def inspect(reactor, description: str, trust: TlsTrust | None, timeout: float) -> Inspection:
    """Inspect the master at a `tls:` / `ssl:` string as `trust` would check it.

    Raises ValueError for a string or trust that would check nothing, and whatever the
    connection raises (refused, timed out, not TLS) when no certificate could be seen at all.
    """
    from .tlsclient import tls_endpoint

    mode = tls.check(description, trust)
    look = tls_endpoint(reactor, description, TlsTrust(insecure=True), quiet=True)
    transport = await _handshake(reactor, look, timeout)
    try:
        peer = transport.getPeerCertificate()
        about = tls.describe(peer.to_cryptography()) if peer is not None else None
    finally:
        transport.loseConnection()
    if mode == "insecure":
        return Inspection(mode, about, None)
    try:
        transport = await _handshake(reactor, tls_endpoint(reactor, description, trust), timeout)
    except TlsVerifyError as e:
        return Inspection(mode, about, e.problem)
    transport.loseConnection()
    return Inspection(mode, about, None)


_CHECKED_BY = {"pin": "the pinned fingerprint", "ca": "the given CA", "system": "the system's CAs",
               "insecure": "nothing (insecure)"}


def summary(found: Inspection) -> tuple[bool, str, str, str]:
    """(ok, detail, likely cause, fix) of an inspection, in the words of a doctor stage."""
    cert = found.certificate
    if cert is None:
        shown = "no certificate seen"
    else:
        names = ", ".join(cert["san"]) or "no subjectAltName"
        shown = (f"certificate {cert['subject']} for {names}, expires {cert['not_after']}, "
                 f"SHA-256 {cert['fingerprint']}")
    if found.problem is None:
        return True, f"{shown}; checked by {_CHECKED_BY[found.mode]}", "", ""
    return (False, f"the master's certificate {found.problem.what} ({shown})", found.problem.cause,
            found.problem.fix)
