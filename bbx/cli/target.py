"""Where the master is and who we are, from the options, the environment and master.toml.

In order of preference:

* `--master ENDPOINT` (env BBX_MASTER): `host[:port]` or a full Twisted client endpoint
  string (anything containing '='), with `--user` / `--password` (BBX_USER / BBX_PASSWORD);
* `--master-dir DIR` (env BBX_MASTER_DIR), or the current directory when it holds a
  master.toml: the first `[control] users` entry gives name and password, and the address is
  DIR/master.endpoint (written by the running master, the only way to find a port-0 master)
  or else `[master] listen` turned into a client endpoint.

A TLS master's certificate is checked as `--ca` / `--fingerprint` / `--insecure` (BBX_CA,
BBX_FINGERPRINT, BBX_INSECURE) say; in the master's own directory, without them, the CLI pins
the certificate that master.toml's `ssl:` listen string serves (it knows its own).

This module deliberately parses master.toml itself with tomllib: the CLI must work on an
operator's laptop that only has the file, never importing the master role. No Twisted here
(bbx.pb.tls, which decides how a certificate is checked, imports neither Twisted nor OpenSSL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

# The master's default listen string when master.toml has none (docs/protocol.md §1: 9989 is
# Buildbot's customary PB port).
DEFAULT_LISTEN = "tcp:9989"
ENDPOINT_FILE = "master.endpoint"
CONFIG_FILE = "master.toml"

# Seconds to wait for the connect, and again for the PB login, before calling the master
# unreachable (--timeout, BBX_TIMEOUT).
LOGIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConnOptions:
    """What the operator said about the master; resolve() turns it into a Target."""

    master_dir: Path | None = None
    master: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = LOGIN_TIMEOUT
    ca: Path | None = None
    fingerprint: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Target:
    """A resolved master: the client endpoint string, the control credentials, and how its TLS
    certificate is checked (a bbx.pb.tls.TlsTrust; empty for a tcp: or unix: master)."""

    endpoint: str
    user: str
    password: str
    tls: Any = None


# ---------------------------------------------------------------------------- master.toml


def _control_users(path: Path) -> list[tuple[str, str]]:
    """(name, password) of every [control] user in master.toml; errors name the file."""
    config = _load_toml(path)
    control = config.get("control", {})
    users = control.get("users") if isinstance(control, dict) else None
    if not isinstance(users, list) or not users:
        raise UsageError(
            f"{path}: no [control] users; add users = [{{ name = \"admin\", password = \"...\" }}] "
            "under [control]")
    result = []
    for i, user in enumerate(users):
        if not (isinstance(user, dict) and isinstance(user.get("name"), str)
                and isinstance(user.get("password"), str)):
            raise UsageError(f"{path}: [control] users[{i}] needs a string name and password")
        result.append((user["name"], user["password"]))
    return result


def _listen(path: Path) -> str:
    master = _load_toml(path).get("master", {})
    listen = master.get("listen", DEFAULT_LISTEN) if isinstance(master, dict) else DEFAULT_LISTEN
    if not isinstance(listen, str):
        raise UsageError(f"{path}: [master] listen must be a string such as \"tcp:9989\"")
    return listen


_toml_cache: dict[Path, dict] = {}


def _load_toml(path: Path) -> dict:
    if path in _toml_cache:
        return _toml_cache[path]
    import tomllib  # here, not at the top: `bbx --help` and `--master` runs never parse TOML

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(
            f"no {CONFIG_FILE} in {path.parent}: pass the directory made by "
            f"'bbx master create DIR' (--master-dir), or --master HOST[:PORT]") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied (run as the master's user)") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already says "(at line N, column M)".
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    _toml_cache[path] = data
    return data


# ---------------------------------------------------------------------------- endpoints


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint string on ':' honouring backslash escapes; escapes are kept."""
    parts, current, i = [], "", 0
    while i < len(description):
        c = description[i]
        if c == "\\" and i + 1 < len(description):
            current += description[i : i + 2]
            i += 2
            continue
        if c == ":":
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return text.replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


# A master listening on every interface is reached on loopback from its own host.
_WILDCARD = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def client_for_listen(listen: str) -> str:
    """A server endpoint string (master.toml `listen`) → the client endpoint that reaches it.

    `tcp:9989:interface=10.0.0.5` → `tcp:host=10.0.0.5:port=9989`; a wildcard or missing
    interface becomes loopback; `unix:PATH` / `unix:address=PATH` → `unix:path=PATH`;
    `ssl:PORT...` → `tls:host=...:port=PORT`. ValueError for anything else.
    """
    parts = _split_endpoint(listen.strip())
    kind = parts[0].lower() if len(parts) > 1 else "tcp"
    if len(parts) == 1:  # a bare port, the old strports form
        parts = ["tcp", parts[0]]
    positional = [p for p in parts[1:] if "=" not in p.replace("\\=", "")]
    keywords = {}
    for p in parts[1:]:
        if "=" in p.replace("\\=", ""):
            key, _, value = p.partition("=")
            keywords[key] = value
    if kind in ("tcp", "tcp6", "ssl"):
        port = keywords.get("port") or (positional[0] if positional else "")
        if not _unescape(port).isdigit():
            raise ValueError(f"listen endpoint {listen!r} has no port number")
        interface = _unescape(keywords.get("interface", ""))
        host = _WILDCARD.get(interface, interface)
        # tls: rather than ssl: because a tls: client string checks the certificate.
        client_kind = "tls" if kind == "ssl" else "tcp"
        return f"{client_kind}:host={_escape(host)}:port={_unescape(port)}"
    if kind == "unix":
        address = keywords.get("address") or (positional[0] if positional else "")
        if not address:
            raise ValueError(f"listen endpoint {listen!r} has no socket path")
        return f"unix:path={address}"
    raise ValueError(f"cannot derive a client endpoint from listen endpoint {listen!r}")


# ---------------------------------------------------------------------------- resolving


def resolve(options: ConnOptions, cwd: Path | None = None) -> Target:
    """Decide endpoint and credentials from the options (see the module docstring)."""
    cwd = cwd or Path.cwd()
    master_dir = options.master_dir
    if master_dir is None and options.master is None and (cwd / CONFIG_FILE).is_file():
        master_dir = cwd
    if master_dir is not None and not master_dir.is_dir():
        raise UsageError(f"master directory {master_dir} does not exist: pass the directory "
                         "made by 'bbx master create DIR'")

    if options.master is not None:
        endpoint = endpoint_of_master(options.master, bool(
            options.ca or options.fingerprint or options.insecure))
    elif master_dir is not None:
        endpoint = _endpoint_of_dir(master_dir)
    else:
        raise UsageError("which master? pass --master-dir DIR (the master's directory), or "
                         "--master HOST[:PORT] with --user and --password, or run in the master's directory")

    user, password = options.user, options.password
    if password is None:
        if master_dir is None:
            raise UsageError("no control password: pass --password (or set BBX_PASSWORD), "
                             "or --master-dir DIR to read it from master.toml")
        users = _control_users(master_dir / CONFIG_FILE)
        if user is None:
            user, password = users[0]
        else:
            matching = [p for n, p in users if n == user]
            if not matching:
                raise UsageError(f"{master_dir / CONFIG_FILE}: no [control] user named {user!r}; "
                                 "pass --password too, or one of: " + ", ".join(n for n, _ in users))
            password = matching[0]
    if user is None:
        if master_dir is not None:
            user = _control_users(master_dir / CONFIG_FILE)[0][0]
        else:
            raise UsageError("no control user: pass --user (or set BBX_USER)")
    from_dir = master_dir if options.master is None else None
    return Target(endpoint=endpoint, user=user, password=password,
                  tls=trust_for(options, endpoint, from_dir))


def endpoint_of_master(master: str, use_tls: bool) -> str:
    """--master as a client endpoint string: host[:port] (tls: when `use_tls`) or as given."""
    endpoint = master.strip()
    if "=" in endpoint:
        return endpoint
    try:
        from .client import load_twisted

        # bbx.pb.endpoints imports Twisted: first the CLI's lean way (no OpenSSL for a tcp:
        # master, no cookiejar), as every operator command would a moment later anyway.
        load_twisted(tls=use_tls)
        from bbx.pb.endpoints import master_endpoint

        return master_endpoint(endpoint, use_tls=use_tls)
    except ValueError as e:
        raise UsageError(f"--master: {e}; use host[:port] or an endpoint like "
                         "tcp:host=H:port=P") from None


def trust_for(options: ConnOptions, endpoint: str, master_dir: Path | None):
    """How to check the master's certificate: --ca / --fingerprint / --insecure, else (in the
    master's directory) a pin of the certificate its master.toml serves; UsageError (one line)
    when a TLS endpoint would not be checked or the options do not fit it."""
    from bbx.pb import tls

    pin = None
    if options.fingerprint:
        try:
            pin = tls.normalize_fingerprint(options.fingerprint)
        except ValueError as e:
            raise UsageError(f"--fingerprint: {e}") from None
    try:
        trust = tls.TlsTrust(ca=str(options.ca) if options.ca else None, fingerprint=pin,
                             insecure=options.insecure)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not trust.given and master_dir is not None and tls.kind_of(endpoint) in tls.TLS_KINDS:
        trust = tls.TlsTrust(fingerprint=_own_pin(master_dir))
    try:
        tls.check(endpoint, trust)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return trust


def _own_pin(master_dir: Path) -> str:
    """The fingerprint of the certificate the master in `master_dir` serves."""
    from bbx.pb import tls

    config = master_dir / CONFIG_FILE
    listen = tls.resolve_files(_listen(config), master_dir.absolute())
    path = tls.certificate_file(listen)
    if path is None:
        raise UsageError(f"{config}: [master] listen is not an ssl: string, so the master's "
                         "certificate is unknown; pass --ca FILE or --fingerprint SHA256")
    try:
        return tls.fingerprint_of_file(path)
    except ValueError as e:
        raise UsageError(f"cannot pin the master's certificate: {e}; pass --ca FILE or "
                         "--fingerprint SHA256") from None


def _endpoint_of_dir(master_dir: Path) -> str:
    config = master_dir / CONFIG_FILE
    if not config.is_file():
        raise UsageError(f"no {CONFIG_FILE} in {master_dir}: pass the directory made by "
                         "'bbx master create DIR', or --master HOST[:PORT]")
    try:
        written = (master_dir / ENDPOINT_FILE).read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    listen = _listen(config)
    try:
        return client_for_listen(listen)
    except ValueError as e:
        raise UsageError(f"{config}: [master] listen: {e}; pass --master ENDPOINT") from None
