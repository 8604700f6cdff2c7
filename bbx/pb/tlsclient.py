"""The client TLS endpoint that checks the master's certificate (the reasons: bbx/pb/tls.py).

One `_Checker` per endpoint holds the OpenSSL context; each connection gets its own verify
callback. A refusal aborts the handshake before any PB byte is sent, and the connection is
lost with a TlsVerifyError (via TLSMemoryBIOProtocol.failVerification) that names what did not
match, so the slave's log and the CLI say it in one line.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import tls
from .tls import Problem, TlsTrust, TlsVerifyError

log = Logger(namespace="bbx.tls")

# OpenSSL's X509_V_ERR_* codes (include/openssl/x509_vfy.h) an operator meets, in words.
_VERIFY_ERRORS = {
    2: "its issuer's certificate is unknown",
    9: "is not valid yet",
    10: "has expired",
    18: "is self-signed and not among the trusted CAs",
    19: "chains to a self-signed CA that is not trusted",
    20: "was signed by a CA that is not trusted",
    21: "was signed by a CA that is not trusted",
    24: "chains through a certificate that may not sign others",
    26: "may not be used by a server",
    62: "is not valid for the host name",
}


def _chain_problem(code: int, depth: int, subject: str) -> Problem:
    what = _VERIFY_ERRORS.get(code, f"failed OpenSSL's check (X509 error {code})")
    where = "" if depth == 0 else f" (its CA {subject} at depth {depth})"
    if code in (9, 10):
        return Problem(what + where, "the certificate's dates, or a wrong clock on one of the hosts",
                       "renew it, or check this machine's clock")
    if code in (2, 18, 19, 20, 21):
        return Problem(what + where, "a private or self-signed certificate, and this side was not "
                       "given its CA (or a different CA signed it: possibly an interception)",
                       "give the CA that signed it with --ca FILE, or pin it with --fingerprint SHA256")
    return Problem(what + where, "a certificate not made for a TLS server",
                   "reissue the certificate, or pin it with --fingerprint SHA256")


class _Check:
    """The verify callback of one handshake: decide, remember why, fail the connection."""

    def __init__(self, creator: _Checker, protocol):
        self.creator = creator
        self.protocol = protocol
        self.failed = False
        self.warned = False

    def __call__(self, connection, x509, code, depth, ok) -> bool:
        try:
            problem = self._judge(x509, code, depth, bool(ok))
        except Exception as e:  # checking must never fail open
            problem = Problem(f"could not be checked ({type(e).__name__}: {e})",
                              "a malformed certificate", "reissue it")
        if problem is None:
            return True
        if not self.failed:
            self.failed = True
            self.protocol.failVerification(Failure(TlsVerifyError(problem)))
        self.protocol = None
        return False

    def _judge(self, x509, code: int, depth: int, ok: bool) -> Problem | None:
        creator = self.creator
        if creator.mode == "insecure":
            if depth == 0 and not self.warned and not creator.quiet:
                self.warned = True
                log.warn("not checking the TLS certificate of {host} (insecure); its SHA-256 "
                         "fingerprint is {fp}: pin it with --fingerprint", host=creator.target.host,
                         fp=tls.fingerprint(x509.to_cryptography()))
            return None
        if creator.mode == "pin":
            if depth != 0:
                return None  # the pin replaces the chain
            seen = tls.fingerprint(x509.to_cryptography())
            if seen == creator.pin:
                return None
            return Problem(f"has SHA-256 fingerprint {seen}, not the pinned {creator.pin}",
                           "the master's certificate was replaced, or something between here and "
                           "the master is intercepting the connection",
                           "if the master's certificate was replaced on purpose, pin the new one, "
                           "otherwise something is intercepting the connection")
        if not ok:
            subject = x509.to_cryptography().subject.rfc4514_string()
            return _chain_problem(code, depth, subject)
        if depth != 0:
            return None
        return tls.name_problem(x509.to_cryptography(), creator.target.name)


@implementer(IOpenSSLClientConnectionCreator)
class _Checker:
    """Makes the OpenSSL connection for each handshake, with bbx's verify callback."""

    def __init__(self, target: tls.TlsTarget, mode: str, trust: TlsTrust, quiet: bool = False):
        self.target = target
        self.mode = mode
        self.quiet = quiet
        self.pin = tls.normalize_fingerprint(trust.fingerprint) if mode == "pin" else None
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        # TLS 1.2 is the oldest version without known protocol breaks (RFC 8996 retired 1.0/1.1).
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        if mode == "system":
            context.set_default_verify_paths()
        elif mode == "ca":
            roots = tls.load_ca(trust.ca) if trust.ca else tls.load_ca_dir(target.ca_dir)
            store = context.get_cert_store()
            for cert in roots:
                store.add_cert(crypto.X509.from_cryptography(cert))
        self._context = context
        name = target.name
        self._server_name = None if tls.is_ip(name) else name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                              _Check(self, tlsProtocol))
        return connection


def tls_endpoint(reactor, description: str, trust: TlsTrust | None, *, quiet: bool = False):
    """A client endpoint for a `tls:` / `ssl:` string that checks the master as `trust` says.

    ValueError (one line, with the fix) for a string or trust that would not check anything,
    or that cannot be read. `quiet`: no warning for an insecure connection (a probe's).
    """
    trust = trust or TlsTrust()
    mode = tls.check(description, trust)
    target = tls.parse_target(description)
    bind = (target.bind_address, 0) if target.bind_address else None
    inner = HostnameEndpoint(reactor, target.host, target.port, timeout=target.timeout,
                             bindAddress=bind)
    return wrapClientTLS(_Checker(target, mode, trust, quiet), inner)
