"""The master's own TLS key and self-signed certificate, made by `bbx master create --tls`.

The certificate names, in its subjectAltName, every host a slave may dial: the listen
interface, and for a loopback or all-interfaces listen also 127.0.0.1, ::1 and localhost (and,
for all interfaces, this machine's host name), plus any `--tls-name`. Slaves trust it by its
SHA-256 fingerprint (--fingerprint) or by the certificate file itself as their CA (--ca).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

KEY_NAME = "master.key"
CERT_NAME = "master.crt"

# Ten years: slaves pin this certificate, so replacing it means re-pinning every slave;
# `bbx doctor` shows the expiry date well before then.
VALIDITY_DAYS = 3650
# Back-date the start a little so a slave whose clock runs slightly behind still accepts it.
CLOCK_SKEW = datetime.timedelta(hours=1)

LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
_WILDCARDS = ("", "0.0.0.0", "::")


def listen_host(listen: str) -> str:
    """The interface of a tcp:/tcp6:/ssl: listen string ('' = all); ValueError for unix: etc."""
    from bbx.pb.tls import split_description

    parts = split_description(listen.strip())
    if len(parts) == 1:
        return ""  # a bare port: all interfaces
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        raise ValueError(f"--tls needs a TCP listen address, not {listen!r}; "
                         "write e.g. --listen tcp:9989:interface=0.0.0.0")
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key == "interface":
            return value
    return ""


def names_for(listen: str, extra=()) -> list[str]:
    """The host names and addresses the certificate must be valid for, without duplicates."""
    host = listen_host(listen)
    names: list[str] = []
    if host in _WILDCARDS:
        names += [*LOOPBACK_NAMES, socket.gethostname()]
    else:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        names += [host] + (list(LOOPBACK_NAMES) if loopback else [])
    names += [n.strip() for n in extra if n.strip()]
    seen, out = set(), []
    for n in names:
        key = n.lower()
        if n and key not in seen:
            seen.add(key)
            out.append(n)
    return out


def tls_listen(listen: str, key_name: str = KEY_NAME, cert_name: str = CERT_NAME) -> str:
    """`tcp:9989:interface=X` -> `ssl:9989:interface=X:privateKey=...:certKey=...`."""
    from bbx.pb.tls import join_description, split_description

    parts = split_description(listen.strip())
    if len(parts) == 1:
        parts = ["tcp", parts[0]]
    return join_description(["ssl", *parts[1:], f"privateKey={key_name}", f"certKey={cert_name}"])


def generate(directory: Path, names: list[str], *, force: bool = False) -> tuple[Path, Path, str]:
    """Write DIR/master.key (0600) and DIR/master.crt (0644: it is public, slaves copy it).

    Returns (key path, certificate path, SHA-256 fingerprint). FileExistsError without force.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from bbx.pb.tls import fingerprint

    directory = Path(directory)
    key_path, cert_path = directory / KEY_NAME, directory / CERT_NAME
    if not force:
        for path in (key_path, cert_path):
            if path.exists():
                raise FileExistsError(str(path))
    # P-256: every TLS 1.2+ peer (OpenSSL, buildbot-worker's Twisted) speaks it, and keys are fast.
    key = ec.generate_private_key(ec.SECP256R1())
    entries = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bbx master {names[0]}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(entries), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, cert_path, fingerprint(cert)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)

