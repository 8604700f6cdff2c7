"""TLS on the client side: how a slave or the CLI checks the master's certificate.

Why bbx builds its own client TLS endpoints instead of using Twisted's `tls:` and `ssl:` strings:

* Twisted's `tls:` endpoint checks the chain and the host name, but fails open for a certificate
  with no subjectAltName. service_identity (since 24.1) raises CertificateError for such a
  certificate; Twisted's verify callback (twisted/internet/_sslverify.py, `_verifyCB`, 26.10)
  catches only VerificationError, logs a critical traceback and lets the chain's verdict stand,
  so a CA-signed certificate for `CN=other` was accepted for 127.0.0.1.
* Twisted's `ssl:` client endpoint checks nothing unless caCertsDir is given.

Here every certificate problem, and any error while checking, refuses the handshake with a
TlsVerifyError that says what did not match and how to fix it. The ways to trust a master are
a TlsTrust: a CA file (--ca), a pinned SHA-256 fingerprint of the master's own certificate
(--fingerprint), the system's CAs (a `tls:` string with neither), or nothing at all (--insecure,
never by default).

Importing this module is cheap (no Twisted, no OpenSSL); the endpoint builder imports them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

TLS_KINDS = ("tls", "ssl")

# Keys of Twisted's `tls:` / `ssl:` client strings that bbx honours. trustRoots (tls:) and
# caCertsDir (ssl:) name a directory of *.pem CA files, as in Twisted; hostname (ssl:) is the
# name to check the certificate against when it differs from the host dialled.
_KEYS = {"host", "port", "timeout", "bindAddress", "trustRoots", "caCertsDir", "hostname"}
# Twisted's default connect timeout for these strings (endpoints._parseClientTLS), seconds.
DEFAULT_TIMEOUT = 30

_HEX = re.compile(r"^[0-9a-f]{64}$")
FINGERPRINT_FIX = ("give the 64 hex digits printed by `bbx master create --tls` or by "
                   "`openssl x509 -noout -fingerprint -sha256 -in CERT` (colons optional)")


@dataclass(frozen=True)
class Problem:
    """Why a certificate was refused: what is wrong with it, the likely cause, and the fix."""

    what: str  # completes "the master's certificate ..."
    cause: str
    fix: str


class TlsVerifyError(Exception):
    """The master's certificate was refused; str() is one line: what did not match, and the fix.

    `problem` (a Problem) holds the parts, for `bbx doctor`.
    """

    def __init__(self, problem: Problem):
        super().__init__(f"the master's certificate {problem.what}; {problem.fix}")
        self.problem = problem


@dataclass(frozen=True)
class TlsTrust:
    """How a client decides that the master's certificate is the master's.

    `ca`: a PEM file of CA certificates; `fingerprint`: the SHA-256 fingerprint of the master's
    own certificate (normalised AB:CD:...); `insecure`: accept any certificate. All empty means
    the system's CAs, for a `tls:` string only.
    """

    ca: str | None = None
    fingerprint: str | None = None
    insecure: bool = False

    def __post_init__(self):
        given = [n for n, v in (("--ca", self.ca), ("--fingerprint", self.fingerprint),
                                ("--insecure", self.insecure)) if v]
        if len(given) > 1:
            raise ValueError(f"give one of --ca, --fingerprint and --insecure, not {' and '.join(given)}")

    @property
    def given(self) -> bool:
        return bool(self.ca or self.fingerprint or self.insecure)


def normalize_fingerprint(text: str) -> str:
    """'sha256:ab:cd...' / 'AB CD ...' / 'abcd...' -> 'AB:CD:...'; ValueError says the form."""
    raw = text.strip()
    lowered = raw.lower()
    for prefix in ("sha256:", "sha256=", "sha256 fingerprint=", "sha-256:"):
        if lowered.startswith(prefix):
            lowered = lowered[len(prefix):]
            break
    digits = re.sub(r"[\s:]", "", lowered)
    if not _HEX.match(digits):
        raise ValueError(f"{raw!r} is not a SHA-256 fingerprint; {FINGERPRINT_FIX}")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()


# ---------------------------------------------------------------------------- endpoint strings


def split_description(description: str) -> list[str]:
    """Split an endpoint string on unescaped ':' and unescape each part (Twisted's rules)."""
    parts, current, i = [], [], 0
    while i < len(description):
        c = description[i]
        if c == "\\" and i + 1 < len(description):
            current.append(description[i + 1])
            i += 2
            continue
        if c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def join_description(parts: list[str]) -> str:
    """The inverse of split_description: escape each part's '\\' and ':' and join them."""
    return ":".join(p.replace("\\", "\\\\").replace(":", "\\:") for p in parts)


def kind_of(description: str) -> str:
    """The endpoint type of a client string, lower case ('tcp', 'tls', 'unix', ...)."""
    head, sep, _ = description.strip().partition(":")
    return head.lower() if sep else ""


@dataclass(frozen=True)
class TlsTarget:
    """A parsed `tls:` / `ssl:` client string."""

    kind: str
    host: str
    port: int
    timeout: float = DEFAULT_TIMEOUT
    bind_address: str | None = None
    ca_dir: str | None = None
    check_name: str | None = None

    @property
    def name(self) -> str:
        """The name the certificate must be valid for."""
        return self.check_name or self.host


def parse_target(description: str) -> TlsTarget:
    """Parse a `tls:` or `ssl:` client string; ValueError names what is wrong."""
    parts = split_description(description.strip())
    kind = parts[0].lower()
    if kind not in TLS_KINDS:
        raise ValueError(f"{description!r} is not a tls: or ssl: endpoint")
    positional, keywords = [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            keywords[key] = value
        else:
            positional.append(part)
    unknown = sorted(set(keywords) - _KEYS)
    if unknown:
        if set(unknown) & {"certificate", "certKey", "privateKey"}:
            raise ValueError(f"{description!r}: client certificates are not supported (the master "
                             f"checks a slave by its password); remove {', '.join(unknown)}")
        raise ValueError(f"{description!r}: unknown option {unknown[0]}=; bbx reads "
                         f"{', '.join(sorted(_KEYS))}")
    if len(positional) > 2:
        raise ValueError(f"{description!r}: too many parts; write {kind}:host=HOST:port=PORT")
    host = keywords.get("host") or (positional[0] if positional else "")
    port_text = keywords.get("port") or (positional[1] if len(positional) > 1 else "")
    if not host:
        raise ValueError(f"{description!r} has no host; write {kind}:host=HOST:port=PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{description!r} has no valid port; write {kind}:host=HOST:port=PORT")
    try:
        timeout = float(keywords.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise ValueError(f"{description!r}: timeout must be a number of seconds") from None
    ca_dir = keywords.get("trustRoots") or keywords.get("caCertsDir")
    return TlsTarget(kind=kind, host=host, port=int(port_text), timeout=timeout,
                     bind_address=keywords.get("bindAddress"), ca_dir=ca_dir,
                     check_name=keywords.get("hostname"))


def check(description: str, trust: TlsTrust | None) -> str:
    """Decide how `description` will be verified; ValueError (one line, with the fix) when it
    would not be, or when the TLS options do not fit the string.

    Returns the mode: 'plain' (not TLS), 'pin', 'ca', 'system' or 'insecure'.
    """
    trust = trust or TlsTrust()
    if kind_of(description) not in TLS_KINDS:
        if trust.given:
            raise ValueError(f"--ca, --fingerprint and --insecure are for TLS connections, and "
                             f"{description!r} is not one; use a tls: endpoint (or bbx slave "
                             "create --use-tls)")
        return "plain"
    target = parse_target(description)
    if target.ca_dir and trust.given:
        option = "trustRoots" if target.kind == "tls" else "caCertsDir"
        raise ValueError(f"{description!r} names its CAs ({option}=); drop that option or "
                         "--ca/--fingerprint/--insecure")
    if trust.insecure:
        return "insecure"
    if trust.fingerprint:
        normalize_fingerprint(trust.fingerprint)
        return "pin"
    if trust.ca or target.ca_dir:
        roots = load_ca(trust.ca) if trust.ca else load_ca_dir(target.ca_dir)
        if not roots:
            raise ValueError(f"no CA certificate in {trust.ca or target.ca_dir}")
        return "ca"
    if target.kind == "ssl":
        raise ValueError(f"{description!r} would not check the master's certificate at all; "
                         "give --ca FILE (the CA that signed it) or --fingerprint SHA256 (the "
                         "master's own), or --insecure to connect without checking")
    return "system"


# ---------------------------------------------------------------------------- server strings

# The file-naming keys of Twisted's `ssl:` server string (endpoints._parseSSL).
_FILE_KEYS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def resolve_files(listen: str, basedir: Path) -> str:
    """An `ssl:` listen string with its relative key and certificate paths made relative to the
    master's directory (Twisted would read them relative to the current directory)."""
    parts = split_description(listen.strip())
    if len(parts) < 2 or parts[0].lower() != "ssl":
        return listen
    out = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key in _FILE_KEYS and value and not os.path.isabs(value):
            part = f"{key}={Path(basedir) / value}"
        out.append(part)
    return join_description(["ssl", *out])


def certificate_file(listen: str) -> str | None:
    """The certificate file an `ssl:` listen string serves (certKey, else privateKey), or None."""
    parts = split_description(listen.strip())
    if len(parts) < 2 or parts[0].lower() != "ssl":
        return None
    keys = dict(p.partition("=")[::2] for p in parts[1:] if "=" in p)
    # Twisted's defaults: privateKey="server.pem", certKey=privateKey.
    return keys.get("certKey") or keys.get("privateKey") or "server.pem"


# ---------------------------------------------------------------------------- certificates


def load_certificates(path: str | os.PathLike) -> list:
    """Every PEM certificate in a file (cryptography objects); ValueError names the problem."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def load_ca(path: str) -> list:
    return load_certificates(path)


def load_ca_dir(directory: str) -> list:
    """The certificates of every *.pem file in a directory, as Twisted's trustRoots= reads it."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".pem"))
    except OSError as e:
        raise ValueError(f"cannot read the CA directory {directory}: {e.strerror or e}") from None
    certs = []
    for name in names:
        certs.extend(load_certificates(os.path.join(directory, name)))
    return certs


def fingerprint(cert) -> str:
    """The SHA-256 fingerprint of a cryptography certificate, as AB:CD:..."""
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def fingerprint_of_file(path: str | os.PathLike) -> str:
    """The fingerprint of the first certificate in a PEM file (a server's own comes first)."""
    return fingerprint(load_certificates(path)[0])


def subject_alt_names(cert) -> list[str]:
    """'DNS:name' / 'IP:addr' entries of a certificate's subjectAltName (empty when it has none)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)])


def describe(cert) -> dict:
    """What an operator wants to know about a certificate, as plain strings and flags."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "subject": cert.subject.rfc4514_string() or "(empty)",
        "issuer": cert.issuer.rfc4514_string() or "(empty)",
        "san": subject_alt_names(cert),
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "fingerprint": fingerprint(cert),
        "self_signed": cert.issuer == cert.subject,
        "expired": cert.not_valid_after_utc < now,
    }


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def name_problem(cert, name: str) -> Problem | None:
    """Why `cert` is not valid for host `name` (None when it is), checked by service_identity."""
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import (verify_certificate_hostname,
                                               verify_certificate_ip_address)

    names = subject_alt_names(cert)
    subject = cert.subject.rfc4514_string() or "an empty subject"
    try:
        if is_ip(name):
            verify_certificate_ip_address(cert, name)
        else:
            verify_certificate_hostname(cert, name)
    except (VerificationError, CertificateError):
        if not names:
            return Problem(
                f"has no subjectAltName ({subject}), so it is valid for no host name",
                "a certificate made the old way, naming its host only in the common name, which "
                "is not used for checks",
                f"reissue it with {name} in its subjectAltName (bbx master create --tls writes "
                "one, --tls-name adds names), or pin it with --fingerprint")
        return Problem(f"is for {', '.join(names)}, not {name}",
                       f"{name} is a name or address the certificate does not list",
                       f"connect to one of those names, or reissue the certificate with {name} "
                       "in its subjectAltName")
    except Exception as e:  # a malformed certificate: refuse it, never let it through
        return Problem(f"could not be checked for {name} ({type(e).__name__}: {e})",
                       "a malformed certificate", "reissue it")
    return None
