"""master.toml -> frozen dataclasses, validated once at load.

Every problem is a ConfigError whose message names the file, the line (where one can be
found), the key, and what to do about it. Code elsewhere never reads the raw TOML.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

CONFIG_NAME = "master.toml"
DEFAULT_LISTEN = "tcp:9989:interface=127.0.0.1"
# Buildbot 4.3 sends its keepalive print once an hour (PROTOCOL.md §4.4) and never declares a
# silent peer gone; bbx probes more often so a vanished slave is noticed within minutes.
DEFAULT_KEEPALIVE_INTERVAL = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 180.0
DEFAULT_LOG = "master.log"
DEFAULT_CONTROL_USER = "admin"
DEFAULT_SLAVE = "local"

# Characters Buildbot replaces with '_' to derive a builddir from a builder name
# (PROTOCOL.md §4.1 step 2.4, buildbot util/__init__.py safeTranslate).
_UNSAFE_BUILDDIR = re.compile(r"[\t !#$%&'()*+,./:;<=>?@\[\\\]^{|}~]")

# Builder keys accepted now but used by later issues (build steps, concurrency).
_FUTURE_BUILDER_KEYS = frozenset({"steps", "max_builds"})


class ConfigError(Exception):
    """master.toml is missing, malformed or inconsistent; str(error) says where and how to fix it."""


@dataclass(frozen=True)
class SlaveConfig:
    """One slave the master accepts: its login name and password."""

    name: str
    password: str


@dataclass(frozen=True)
class BuilderConfig:
    """One builder: which slaves may run it and the directory it uses on them."""

    name: str
    slaves: tuple[str, ...]
    builddir: str


@dataclass(frozen=True)
class ControlUser:
    """An operator account for the CLI's control perspective."""

    name: str
    password: str


@dataclass(frozen=True)
class MasterConfig:
    """The whole master configuration."""

    path: Path
    listen: str
    keepalive_interval: float
    keepalive_timeout: float
    log: str
    slaves: tuple[SlaveConfig, ...]
    builders: tuple[BuilderConfig, ...]
    control_users: tuple[ControlUser, ...] = field(default_factory=tuple)

    def slave(self, name: str) -> SlaveConfig | None:
        return next((s for s in self.slaves if s.name == name), None)

    def builder(self, name: str) -> BuilderConfig | None:
        return next((b for b in self.builders if b.name == name), None)

    def control_user(self, name: str) -> ControlUser | None:
        return next((u for u in self.control_users if u.name == name), None)


def safe_builddir(name: str) -> str:
    """The builddir Buildbot derives from a builder name."""
    return _UNSAFE_BUILDDIR.sub("_", name)


class _Locator:
    """Finds the line of a key in the raw text, for error messages (tomllib gives none)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def _section_start(self, header: str, index: int) -> int | None:
        pattern = re.compile(r"^\s*" + re.escape(header) + r"\s*(#.*)?$")
        seen = -1
        for number, line in enumerate(self.lines):
            if pattern.match(line):
                seen += 1
                if seen == index:
                    return number
        return None

    def line(self, header: str | None, key: str | None = None, index: int = 0,
             value: str | None = None) -> int | None:
        start = 0
        if header is not None:
            found = self._section_start(header, index)
            if found is None:
                return None
            start = found
        if key is None:
            return start + 1
        key_re = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for number in range(start + (1 if header else 0), len(self.lines)):
            line = self.lines[number]
            if header is not None and number > start and re.match(r"^\s*\[", line):
                break
            if key_re.match(line) or (value is not None and value in line):
                return number + 1
        return start + 1 if header else None


class _Loader:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.where = _Locator(text)

    def fail(self, line: int | None, key: str, problem: str, fix: str) -> ConfigError:
        at = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{at}: {key}: {problem}; {fix}")

    def string(self, table: dict, key: str, header: str, index: int = 0, *, required=True,
               default: str | None = None, label: str | None = None) -> str:
        label = label or key
        if key not in table:
            if required:
                raise self.fail(self.where.line(header, None, index), label, "missing",
                                f"add {key} = \"...\" under {header}")
            return default  # type: ignore[return-value]
        value = table[key]
        if not isinstance(value, str):
            raise self.fail(self.where.line(header, key, index), label,
                            f"must be a string, not {type(value).__name__}", "quote the value")
        if not value.strip():
            raise self.fail(self.where.line(header, key, index), label, "is empty",
                            "give it a non-empty value")
        return value

    def positive(self, table: dict, key: str, header: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(self.where.line(header, key), f"master.{key}",
                            f"must be a positive number of seconds, not {value!r}",
                            f"set e.g. {key} = {int(default)}")
        return float(value)

    def unknown(self, table: dict, known: Iterable[str], header: str, index: int = 0) -> None:
        for key in table:
            if key not in known:
                raise self.fail(self.where.line(header, key, index), f"{header} {key}",
                                "is not a known key",
                                f"remove it (known keys: {', '.join(sorted(known))})")


def load_config(basedir: str | os.PathLike) -> MasterConfig:
    """Read and validate DIR/master.toml; raise ConfigError naming file, line, key and fix."""
    path = Path(basedir) / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; create it with `bbx master create {basedir}`") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text; save it as UTF-8") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> MasterConfig:
    """Validate the TOML text of a master.toml; `path` is used in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python < 3.14 keeps line and column only in the message: "... (at line L, column C)".
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = getattr(e, "lineno", None) or (int(found.group(1)) if found else None)
        col = getattr(e, "colno", None) or (int(found.group(2)) if found else None)
        msg = getattr(e, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(e))
        at = f"{path}:{line}:{col}" if line else str(path)
        raise ConfigError(f"{at}: TOML syntax error: {msg}; fix the syntax at that spot") from None
    ld = _Loader(path, text)

    for key in data:
        if key not in ("master", "slaves", "builders", "control"):
            raise ld.fail(ld.where.line(f"[{key}]") or ld.where.line(None, key), key,
                          "is not a known section",
                          "use only [master], [[slaves]], [[builders]] and [control]")

    master = data.get("master", {})
    if not isinstance(master, dict):
        raise ld.fail(ld.where.line(None, "master"), "master", "must be a table", "write it as [master]")
    ld.unknown(master, ("listen", "keepalive_interval", "keepalive_timeout", "log"), "[master]")
    listen = ld.string(master, "listen", "[master]", required=False, default=DEFAULT_LISTEN,
                       label="master.listen")
    interval = ld.positive(master, "keepalive_interval", "[master]", DEFAULT_KEEPALIVE_INTERVAL)
    timeout = ld.positive(master, "keepalive_timeout", "[master]", DEFAULT_KEEPALIVE_TIMEOUT)
    if timeout <= interval:
        raise ld.fail(ld.where.line("[master]", "keepalive_timeout"), "master.keepalive_timeout",
                      f"({timeout:g}) must be longer than keepalive_interval ({interval:g})",
                      "a slave answers each keepalive, so allow at least two intervals of silence")
    log = ld.string(master, "log", "[master]", required=False, default=DEFAULT_LOG, label="master.log")

    slaves = _load_slaves(ld, data.get("slaves", []))
    control = _load_control(ld, data.get("control", {}))
    builders = _load_builders(ld, data.get("builders", []), slaves)

    slave_names = {s.name for s in slaves}
    for user in control:
        if user.name in slave_names:
            raise ld.fail(ld.where.line("[control]", "users"), "control.users",
                          f"user {user.name!r} has the same name as a slave",
                          "rename one of them: a login name must say which role it is")
    return MasterConfig(path=path, listen=listen, keepalive_interval=interval,
                        keepalive_timeout=timeout, log=log, slaves=tuple(slaves),
                        builders=tuple(builders), control_users=tuple(control))


def _load_slaves(ld: _Loader, items: Any) -> list[SlaveConfig]:
    if not isinstance(items, list):
        raise ld.fail(ld.where.line(None, "slaves"), "slaves", "must be an array of tables",
                      "write each slave as a [[slaves]] block")
    slaves: list[SlaveConfig] = []
    for index, item in enumerate(items):
        header = "[[slaves]]"
        ld.unknown(item, ("name", "password"), header, index)
        name = ld.string(item, "name", header, index, label=f"slaves[{index}].name")
        password = ld.string(item, "password", header, index, label=f"slaves[{index}].password")
        if any(s.name == name for s in slaves):
            raise ld.fail(ld.where.line(header, "name", index), f"slaves[{index}].name",
                          f"slave {name!r} is configured twice", "give each slave a unique name")
        slaves.append(SlaveConfig(name, password))
    return slaves


def _load_builders(ld: _Loader, items: Any, slaves: list[SlaveConfig]) -> list[BuilderConfig]:
    if not isinstance(items, list):
        raise ld.fail(ld.where.line(None, "builders"), "builders", "must be an array of tables",
                      "write each builder as a [[builders]] block")
    known = {s.name for s in slaves}
    builders: list[BuilderConfig] = []
    for index, item in enumerate(items):
        header = "[[builders]]"
        label = f"builders[{index}]"
        ld.unknown(item, ("name", "slaves", "builddir", *_FUTURE_BUILDER_KEYS), header, index)
        name = ld.string(item, "name", header, index, label=f"{label}.name")
        if any(b.name == name for b in builders):
            raise ld.fail(ld.where.line(header, "name", index), f"{label}.name",
                          f"builder {name!r} is configured twice", "give each builder a unique name")
        names = item.get("slaves")
        line = ld.where.line(header, "slaves", index)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ld.fail(line, f"{label}.slaves", "must be a non-empty list of slave names",
                          'write e.g. slaves = ["local"]')
        for slave_name in names:
            if slave_name not in known:
                choices = ", ".join(sorted(known)) or "none configured"
                raise ld.fail(line, f"{label}.slaves", f"slave {slave_name!r} is not configured",
                              f"add a [[slaves]] block for it or use one of: {choices}")
        if len(set(names)) != len(names):
            raise ld.fail(line, f"{label}.slaves", "lists a slave twice", "list each slave once")
        builddir = ld.string(item, "builddir", header, index, required=False,
                             default=safe_builddir(name), label=f"{label}.builddir")
        if os.path.isabs(builddir) or ".." in Path(builddir).parts:
            raise ld.fail(ld.where.line(header, "builddir", index), f"{label}.builddir",
                          f"{builddir!r} leaves the slave's basedir",
                          "use a relative directory name")
        builders.append(BuilderConfig(name, tuple(names), builddir))
    return builders


def _load_control(ld: _Loader, control: Any) -> list[ControlUser]:
    if not isinstance(control, dict):
        raise ld.fail(ld.where.line(None, "control"), "control", "must be a table",
                      "write it as [control]")
    ld.unknown(control, ("users",), "[control]")
    users = control.get("users", [])
    line = ld.where.line("[control]", "users")
    if not isinstance(users, list):
        raise ld.fail(line, "control.users", "must be a list of {name, password} tables",
                      'write users = [{ name = "admin", password = "..." }]')
    result: list[ControlUser] = []
    for index, user in enumerate(users):
        label = f"control.users[{index}]"
        if not isinstance(user, dict):
            raise ld.fail(line, label, "must be a table", 'write { name = "admin", password = "..." }')
        extra = set(user) - {"name", "password"}
        if extra:
            raise ld.fail(line, label, f"unknown key {sorted(extra)[0]!r}", "use only name and password")
        for key in ("name", "password"):
            value = user.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ld.fail(ld.where.line("[control]", None, 0, value=f"{user.get('name')}") or line,
                              f"{label}.{key}", "is missing or empty", "give it a non-empty string")
        if any(u.name == user["name"] for u in result):
            raise ld.fail(line, f"{label}.name", f"user {user['name']!r} is listed twice",
                          "give each control user a unique name")
        result.append(ControlUser(user["name"], user["password"]))
    return result


def new_password() -> str:
    """A random password fit for a config file."""
    return secrets.token_urlsafe(18)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(listen: str, slaves: Iterable[SlaveConfig], builders: Iterable[BuilderConfig],
                  control: Iterable[ControlUser]) -> str:
    """The commented master.toml text for the given settings."""
    out = [
        "# bbx master configuration. Check it with `bbx master checkconfig DIR`.",
        "# It holds passwords: keep it private (mode 0600).",
        "",
        "[master]",
        "# Where slaves and operators connect: a Twisted server endpoint string,",
        '# e.g. "tcp:9989" (all interfaces), "tcp:9989:interface=127.0.0.1", "unix:/path/sock".',
        f"listen = {_quote(listen)}",
        "# Seconds between the master's keepalive messages to each slave.",
        f"keepalive_interval = {int(DEFAULT_KEEPALIVE_INTERVAL)}",
        "# Seconds of silence after which a slave is declared gone and its commands fail.",
        f"keepalive_timeout = {int(DEFAULT_KEEPALIVE_TIMEOUT)}",
        "# Log file, relative to this directory.",
        f'# log = "{DEFAULT_LOG}"',
        "",
        "# One [[slaves]] block per machine allowed to connect. A slave logs in with this",
        "# name and password (`bbx slave create` or `buildbot-worker create-worker`).",
    ]
    for slave in slaves:
        out += ["[[slaves]]", f"name = {_quote(slave.name)}", f"password = {_quote(slave.password)}", ""]
    out += [
        "# One [[builders]] block per kind of job: the slaves that may run it and the",
        "# directory it uses inside each slave's basedir.",
    ]
    for builder in builders:
        names = ", ".join(_quote(n) for n in builder.slaves)
        out += ["[[builders]]", f"name = {_quote(builder.name)}", f"slaves = [{names}]",
                f"builddir = {_quote(builder.builddir)}", ""]
    out += [
        "# Operators: `bbx ping`, `bbx run`, ... log in with one of these.",
        "[control]",
        "users = [",
    ]
    for user in control:
        out.append(f"  {{ name = {_quote(user.name)}, password = {_quote(user.password)} }},")
    out += ["]", ""]
    return "\n".join(out)


def write_config(basedir: str | os.PathLike, listen: str, slaves: Iterable[SlaveConfig],
                 builders: Iterable[BuilderConfig],
                 control: Iterable[ControlUser] | None = None, *, force: bool = False) -> Path:
    """Write a commented DIR/master.toml with mode 0600 and return its path.

    Without `force` an existing file is never overwritten (FileExistsError).
    """
    if control is None:
        control = [ControlUser(DEFAULT_CONTROL_USER, new_password())]
    directory = Path(basedir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    text = render_config(listen, slaves, builders, control)
    parse_config(text, path)  # never write a file that would not load
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    return path
