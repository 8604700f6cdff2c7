"""A slave's base directory: create it, load and validate its configuration.

    DIR/               mode 0700, as is info/; the slave's own files are 0600:
    DIR/slave.toml     the configuration (it holds the password)
    DIR/info/admin     who runs this slave; sent to the master verbatim
    DIR/info/host      what this machine is; sent to the master verbatim
    DIR/slave.log      written while running
    DIR/slave.pid      present while running
    DIR/<builddir>/    one per builder the master assigns; what commands create there follows
                       the configured umask (Buildbot's rule: that is the build's business)

Loading turns slave.toml into a frozen SlaveConfig once; every problem is reported as a
BasedirError whose message names the file, the line and key where known, and the fix.
"""

from __future__ import annotations

import json
import math
import os
import stat
import platform
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bbx.pb.liveness import KEEPALIVE_INTERVAL

CONFIG_NAME = "slave.toml"
LOG_NAME = "slave.log"
PID_NAME = "slave.pid"
INFO_DIR = "info"
SHUTDOWN_STAMP = "shutdown.stamp"

DEFAULT_ADMIN = "Your Name Here <admin@youraddress.invalid>"  # buildbot-worker's placeholder (§8)
# Seconds between keepalive calls. create-worker's default is 600 (docs/protocol.md §4.4, §8),
# which with the derived deadline below left a vanished master unnoticed for 1,230 s; bbx
# uses the shared 30 s (bbx/pb/liveness.py), so the derived deadline is 90 s.
DEFAULT_KEEPALIVE = KEEPALIVE_INTERVAL
DEFAULT_MAXDELAY = 300  # create-worker's default (docs/protocol.md §7, §8)
ALLOW_SHUTDOWN = ("", "signal", "file")  # docs/protocol.md §4.5

# When keepalive_timeout is 0 the deadline is derived from the keepalive interval: two
# missed keepalive answers plus a margin for a slow master.
KEEPALIVE_DEADLINE_MISSES = 2
KEEPALIVE_DEADLINE_MARGIN = 30.0

_UMASK_RE = re.compile(r"^(0o[0-7]+|0[0-7]*|[1-9][0-9]*)$")

_KEYS = ("name", "password", "connection", "keepalive", "keepalive_timeout", "maxdelay", "umask",
         "allow_shutdown", "tls_ca", "tls_fingerprint", "tls_insecure", "redact", "commands",
         "cgroup", "tags")

# What the slave creates for itself: only its user may read it (slave.toml holds the password,
# the log may hold paths and names).
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class BasedirError(Exception):
    """A slave directory that cannot be created or loaded; str() is one line with the fix."""


@dataclass(frozen=True)
class SlaveConfig:
    """A validated slave.toml plus where it lives."""

    basedir: str
    name: str
    password: str
    connection: str                 # the first master; `connections` lists them all
    keepalive: int = DEFAULT_KEEPALIVE
    keepalive_timeout: float = 0.0
    maxdelay: float = DEFAULT_MAXDELAY
    umask: int | None = None
    allow_shutdown: str = ""
    redact: tuple[str, ...] = ()  # extra secret-name globs (--redact)
    commands: tuple[str, ...] | None = None  # the allow-list (--commands); None = all
    cgroup: bool = True  # run commands in cgroups where the host allows it
    tls_ca: str = ""
    tls_fingerprint: str = ""
    tls_insecure: bool = False
    tags: tuple[str, ...] = ()  # offered to the master at attach, in the info dict

    @property
    def tls(self):
        """How the master's TLS certificate is checked (a bbx.pb.tls.TlsTrust)."""
        from bbx.pb.tls import TlsTrust

        return TlsTrust(ca=self.tls_ca or None, fingerprint=self.tls_fingerprint or None,
                        insecure=self.tls_insecure)

    connections: tuple[str, ...] = ()

    @property
    def masters(self) -> tuple[str, ...]:
        """Every master to try, in order: the slave connects to the first that answers and
        moves to the next when its master is gone (several masters on one store)."""
        return self.connections or (self.connection,)

    @property
    def keepalive_deadline(self) -> float | None:
        """Seconds of silence from the master after which the connection counts as dead.

        An explicit keepalive_timeout wins; otherwise 2 × keepalive + 30 s; None (never) when
        both are 0.
        """
        if self.keepalive_timeout > 0:
            return float(self.keepalive_timeout)
        if self.keepalive > 0:
            return KEEPALIVE_DEADLINE_MISSES * self.keepalive + KEEPALIVE_DEADLINE_MARGIN
        return None

    def path(self, name: str) -> str:
        return os.path.join(self.basedir, name)


def default_host_info() -> str:
    """What info/host says when the operator does not: the host name and the platform."""
    return f"{socket.gethostname()} ({platform.platform()}, Python {platform.python_version()})"


def parse_umask(text: str) -> int | None:
    """'' -> None (inherit); '0o022' / '022' / '18' -> int. ValueError names the accepted forms."""
    text = str(text).strip()
    if not text:
        return None
    if not _UMASK_RE.match(text):
        raise ValueError(f"umask {text!r} is not an octal number like 0o022 or 022")
    if text.startswith("0o"):
        value = int(text[2:], 8)
    elif text.startswith("0"):
        value = int(text, 8)
    else:
        value = int(text)
    if value > 0o777:
        raise ValueError(f"umask {text!r} is larger than 0o777")
    return value


def _toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def render_config(*, name: str, password: str, connection, keepalive: int,
                  keepalive_timeout: float, maxdelay: float, umask: str, allow_shutdown: str,
                  tls_ca: str = "", tls_fingerprint: str = "", tls_insecure: bool = False,
                  redact=(), commands=None, cgroup: bool = True, tags=()) -> str:
    """slave.toml text, commented so an operator can edit it by hand. `connection` is one
    endpoint string or a list of them (several masters)."""
    kt = int(keepalive_timeout) if float(keepalive_timeout).is_integer() else keepalive_timeout
    md = int(maxdelay) if float(maxdelay).is_integer() else maxdelay
    redact_text = "[" + ", ".join(_toml_str(g) for g in redact) + "]"
    tags_text = "[" + ", ".join(_toml_str(t) for t in tags) + "]"
    commands_text = _toml_str("all") if commands is None else \
        "[" + ", ".join(_toml_str(c) for c in commands) + "]"
    if isinstance(connection, str):
        connection_value = _toml_str(connection)
    else:
        connection_value = "[" + ", ".join(_toml_str(c) for c in connection) + "]"
    return f"""\
# bbx slave configuration. Edit, then restart: bbx slave stop DIR && bbx slave start DIR
[slave]
# The name and password this slave logs in with; they must match the master's config.
name = {_toml_str(name)}
password = {_toml_str(password)}
# Where the master listens: a Twisted client endpoint string, e.g.
# "tcp:host=master.example.org:port=9989" or "tls:host=master.example.org:port=9989";
# or a list of them for several masters sharing one farm: the slave attaches to the first
# that answers and moves on to the next when its master is gone.
connection = {connection_value}
# How a tls: connection checks the master's certificate, one of:
#   tls_ca: a PEM file of the CA(s) that signed it ("" with a tls: connection = the system's CAs);
#   tls_fingerprint: the SHA-256 fingerprint of the master's own certificate (exactly that
#     certificate is accepted, for any host name);
#   tls_insecure = true: accept any certificate (no protection against interception).
tls_ca = {_toml_str(tls_ca)}
tls_fingerprint = {_toml_str(tls_fingerprint)}
tls_insecure = {"true" if tls_insecure else "false"}
# Seconds between keepalive calls to the master (0 = none).
keepalive = {int(keepalive)}
# Seconds of silence from the master before the connection is dropped and retried;
# 0 = 2 x keepalive + 30.
keepalive_timeout = {kt}
# Longest wait, in seconds, between reconnection attempts.
maxdelay = {md}
# File-creation mask for the slave and its commands, e.g. "0o022"; "" = inherit.
umask = {_toml_str(umask)}
# How an operator may ask for a graceful shutdown: "" (never), "signal" (SIGHUP) or
# "file" (touch DIR/{SHUTDOWN_STAMP}).
allow_shutdown = {_toml_str(allow_shutdown)}
# More environment variable names (shell patterns, any case) whose values are secret, on top
# of *TOKEN*, *SECRET*, *PASSWORD*, *PASSWD*, *KEY*, *CREDENTIAL*: hidden in the info and
# headers the slave sends and replaced by <redacted> in command output.
redact = {redact_text}
# The commands this slave advertises and accepts: "all", or a list such as
# ["uploadFile", "downloadFile", "stat"].
commands = {commands_text}
# Run each command in its own cgroup (cgroup v2, as root or with delegation) when possible.
cgroup = {"true" if cgroup else "false"}
# Tags this slave offers the master at attach, e.g. ["linux", "x86_64", "docker"]: builders
# that select slaves by tags may use it without a master edit (the master adds its own).
tags = {tags_text}
"""


def create(basedir: str | os.PathLike, *, name: str, password: str, connection,
           keepalive: int = DEFAULT_KEEPALIVE, keepalive_timeout: float = 0,
           maxdelay: float = DEFAULT_MAXDELAY, umask: str = "", allow_shutdown: str = "",
           redact=(), commands=None, cgroup: bool = True, tags=(),
           info_admin: str | None = None, info_host: str | None = None,
           tls_ca: str = "", tls_fingerprint: str = "", tls_insecure: bool = False,
           force: bool = False) -> SlaveConfig:
    """Create (or with force, overwrite) a slave directory; return its loaded configuration.
    `connection` is one endpoint string, or a list of them (several masters)."""
    if not isinstance(connection, str):
        connection = list(connection)
        if len(connection) == 1:
            connection = connection[0]
    base = Path(basedir).absolute()
    config_path = base / CONFIG_NAME
    if config_path.exists() and not force:
        raise BasedirError(f"{config_path} already exists; use --force to overwrite it")
    if base.exists() and not base.is_dir():
        raise BasedirError(f"{base} exists and is not a directory; choose another DIR")
    if tls_ca:
        tls_ca = str(Path(tls_ca).absolute())
    checked = _check_values(str(config_path), dict(
        name=name, password=password, connection=connection, keepalive=keepalive,
        keepalive_timeout=keepalive_timeout, maxdelay=maxdelay, umask=umask,
        allow_shutdown=allow_shutdown, tls_ca=tls_ca, tls_fingerprint=tls_fingerprint,
        tls_insecure=tls_insecure, redact=list(redact),
        commands="all" if commands is None else list(commands), cgroup=cgroup,
        tags=list(tags)), lines={}, base=base)
    text = render_config(name=name, password=password, connection=connection, keepalive=keepalive,
                         keepalive_timeout=keepalive_timeout, maxdelay=maxdelay, umask=umask,
                         allow_shutdown=allow_shutdown, tls_ca=tls_ca,
                         tls_fingerprint=checked["tls_fingerprint"], tls_insecure=tls_insecure,
                         redact=checked["redact"], commands=checked["commands"],
                         cgroup=checked["cgroup"], tags=checked["tags"])
    try:
        private_dir(base)
        private_dir(base / INFO_DIR)
        with private_file(config_path, "w") as f:
            f.write(text)
        _write_info(base / INFO_DIR / "admin", info_admin, DEFAULT_ADMIN, force)
        _write_info(base / INFO_DIR / "host", info_host, default_host_info(), force)
    except OSError as e:
        raise BasedirError(f"cannot create the slave directory {base}: {e.strerror or e}; "
                           "check the path and its permissions") from None
    return load(base)


def private_dir(path: str | os.PathLike) -> None:
    """Make directory `path` (and missing parents) if needed, and make it PRIVATE_DIR."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)


def private_file(path: str | os.PathLike, mode: str = "a", **kwargs):
    """open() for a file of the slave's own: created PRIVATE_FILE whatever the umask, and made
    so if it already existed (a log written by an older bbx was 0644)."""
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}
    fd = os.open(path, flags[mode], PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, mode, encoding="utf-8", **kwargs)
    except BaseException:
        os.close(fd)
        raise


def _write_info(path: Path, given: str | None, default: str, force: bool) -> None:
    # An operator-edited info file survives a re-create unless a new value is given.
    if given is None and path.exists():
        os.chmod(path, PRIVATE_FILE)
        return
    with private_file(path, "w") as f:
        f.write((given if given is not None else default).rstrip("\n") + "\n")


def _key_lines(text: str) -> dict[str, int]:
    lines = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
        if m:
            lines.setdefault(m.group(1), number)
    return lines


def load(basedir: str | os.PathLike) -> SlaveConfig:
    """Read and validate DIR/slave.toml; BasedirError names what is wrong and how to fix it."""
    base = Path(basedir).absolute()
    if not base.exists():
        raise BasedirError(f"slave directory {base} does not exist; "
                           "create it with: bbx slave create DIR MASTER NAME PASSWORD")
    if not base.is_dir():
        raise BasedirError(f"{base} is not a directory; give the slave directory")
    path = base / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BasedirError(f"{base} is not a slave directory (no {CONFIG_NAME}); "
                           "create it with: bbx slave create DIR MASTER NAME PASSWORD") from None
    except OSError as e:
        raise BasedirError(f"cannot read {path}: {e.strerror or e}; check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BasedirError(f"{path} is not UTF-8 text; rewrite it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BasedirError(f"{path}: malformed TOML: {e}; fix that line") from None
    table = data.get("slave")
    if not isinstance(table, dict):
        raise BasedirError(f"{path}: no [slave] table; add one with name, password and connection")
    others = [k for k in data if k != "slave"]
    if others:
        raise BasedirError(f"{path}: unknown table or key {others[0]!r}; only [slave] is read")
    lines = _key_lines(text)
    unknown = [k for k in table if k not in _KEYS]
    if unknown:
        k = unknown[0]
        raise BasedirError(f"{_where(path, lines, k)}: unknown key {k!r}; "
                           f"the keys are {', '.join(_KEYS)}")
    for k in ("name", "password", "connection"):
        if k not in table:
            raise BasedirError(f"{path}: [slave] has no {k!r}; add {k} = \"...\"")
    values = dict(keepalive=DEFAULT_KEEPALIVE, keepalive_timeout=0, maxdelay=DEFAULT_MAXDELAY,
                  umask="", allow_shutdown="", tls_ca="", tls_fingerprint="", tls_insecure=False,
                  redact=[], commands="all", cgroup=True, tags=[])
    values.update(table)
    checked = _check_values(str(path), values, lines, base=base)
    return SlaveConfig(basedir=str(base), **checked)


def _where(path, lines: dict[str, int], key: str) -> str:
    return f"{path} line {lines[key]}" if key in lines else str(path)


def _check_values(path: str, v: dict, lines: dict[str, int], base: Path) -> dict:
    def bad(key: str, why: str) -> BasedirError:
        return BasedirError(f"{_where(path, lines, key)}: {key} {why}")

    out = {}
    for key in ("name", "password"):
        value = v[key]
        if not isinstance(value, str) or not value.strip():
            raise bad(key, f"must be a non-empty string, got {value!r}; set {key} = \"...\"")
        out[key] = value
    connection = v["connection"]
    if isinstance(connection, list):
        if not connection or not all(isinstance(c, str) and c.strip() for c in connection):
            raise bad("connection", f"must be a non-empty list of endpoint strings, got "
                      f"{connection!r}; write connection = [\"tcp:host=A:port=9989\", ...]")
        if len(set(connection)) != len(connection):
            raise bad("connection", "lists a master twice; list each master once")
        out["connection"] = connection[0]
        out["connections"] = tuple(connection)
    elif not isinstance(connection, str) or not connection.strip():
        raise bad("connection", f"must be a non-empty string or list of strings, got "
                  f"{connection!r}; set connection = \"...\"")
    else:
        out["connection"] = connection
        out["connections"] = (connection,)
    if any(c.isspace() for c in v["name"]):
        raise bad("name", f"{v['name']!r} contains white space; use a name without spaces")
    for key in ("keepalive",):
        value = v[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(key, f"must be a whole number of seconds >= 0, got {value!r}")
        out[key] = value
    for key in ("keepalive_timeout", "maxdelay"):
        value = v[key]
        # `not 0 <= value < inf` also refuses nan (every comparison with it is false).
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise bad(key, f"must be a finite number of seconds >= 0, got {value!r}")
        out[key] = float(value)
    if out["keepalive_timeout"] and not 0 < out["keepalive"] < out["keepalive_timeout"]:
        # The master's answers to our keepalives are what keeps a quiet link alive (a 0.8
        # master sends nothing of its own), so they must come more often than the deadline.
        raise bad("keepalive_timeout", f"({v['keepalive_timeout']!r}) must be longer than "
                  f"keepalive ({v['keepalive']!r}), and keepalive must not be 0: the master's "
                  "answers to keepalives are what tells a quiet link is alive; raise "
                  "keepalive_timeout, or set it to 0 for 2 x keepalive + 30")
    if out["maxdelay"] < 1:
        raise bad("maxdelay", f"must be at least 1 second, got {v['maxdelay']!r}")
    umask = v["umask"]
    if not isinstance(umask, str):
        raise bad("umask", f"must be a string like \"0o022\" (or \"\"), got {umask!r}")
    try:
        out["umask"] = parse_umask(umask)
    except ValueError as e:
        raise bad("umask", f"is invalid: {e}") from None
    allow = v["allow_shutdown"]
    if allow not in ALLOW_SHUTDOWN:
        raise bad("allow_shutdown", f"must be \"\", \"signal\" or \"file\", got {allow!r}")
    out["allow_shutdown"] = allow
    out["redact"] = _check_redact(v["redact"], bad)
    out["commands"] = _check_commands(v["commands"], bad)
    if not isinstance(v["cgroup"], bool):
        raise bad("cgroup", f"must be true or false, got {v['cgroup']!r}")
    out["cgroup"] = v["cgroup"]
    out["tags"] = _check_tags(v["tags"], bad)
    out.update(_check_tls(v, out["connections"], bad, base))
    return out


def _check_tls(v: dict, connections, bad, base: Path) -> dict:
    """The tls_* keys, and whether each connection string with them checks its master."""
    from bbx.pb import tls

    out = {}
    for key in ("tls_ca", "tls_fingerprint"):
        if not isinstance(v[key], str):
            raise bad(key, f"must be a string (or \"\"), got {v[key]!r}")
    if not isinstance(v["tls_insecure"], bool):
        raise bad("tls_insecure", f"must be true or false, got {v['tls_insecure']!r}")
    ca = v["tls_ca"].strip()
    if ca and not os.path.isabs(ca):
        ca = str(base / ca)  # relative to the slave directory
    out["tls_ca"] = ca
    out["tls_fingerprint"] = ""
    if v["tls_fingerprint"].strip():
        try:
            out["tls_fingerprint"] = tls.normalize_fingerprint(v["tls_fingerprint"])
        except ValueError as e:
            raise bad("tls_fingerprint", f"is invalid: {e}") from None
    out["tls_insecure"] = v["tls_insecure"]
    if ca:
        try:
            tls.load_ca(ca)
        except ValueError as e:
            raise bad("tls_ca", f"is unusable: {e}; give the CA certificate's PEM file") from None
    trust = tls.TlsTrust(ca=ca or None, fingerprint=out["tls_fingerprint"] or None,
                         insecure=out["tls_insecure"])
    for connection in connections:
        try:
            tls.check(connection, trust)
        except ValueError as e:
            raise bad("connection", f"{connection!r}: {_as_keys(str(e))}") from None
    return out


def _as_keys(message: str) -> str:
    # The TLS rules speak in command-line options; slave.toml spells them as keys.
    for option, key in (("--ca FILE", "tls_ca = FILE"), ("--fingerprint SHA256", "tls_fingerprint = SHA256"),
                        ("--insecure", "tls_insecure = true"), ("--ca", "tls_ca"),
                        ("--fingerprint", "tls_fingerprint")):
        message = message.replace(option, key)
    return message


def _check_redact(value, bad) -> tuple[str, ...]:
    from bbx.pb.secrets import check_glob

    if not isinstance(value, list):
        raise bad("redact", f"must be a list of name patterns like [\"DEPLOY_*\"], got {value!r}")
    try:
        return tuple(check_glob(g) for g in value)
    except ValueError as e:
        raise bad("redact", f"is invalid: {e}") from None


def _check_tags(value, bad) -> tuple[str, ...]:
    from bbx.pb.tags import check_tags

    if not isinstance(value, list):
        raise bad("tags", f"must be a list like [\"linux\", \"docker\"], got {value!r}")
    try:
        return check_tags(value)
    except ValueError as e:
        raise bad("tags", f"is invalid: {e}") from None


def _check_commands(value, bad) -> tuple[str, ...] | None:
    from bbx.slave.commands import check_allowed

    if value == "all":
        return None
    if not isinstance(value, list):
        raise bad("commands", f"must be \"all\" or a list like [\"uploadFile\", \"stat\"], got {value!r}")
    try:
        return check_allowed(value)
    except ValueError as e:
        raise bad("commands", f"is invalid: {e}") from None
