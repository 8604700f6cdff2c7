"""master.toml -> frozen dataclasses, validated once at load.

Every problem is a ConfigError whose message names the file, the line (where one can be
found), the key, and what to do about it. Code elsewhere never reads the raw TOML.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bbx.pb.interrupts import (DEFAULT_INTERRUPT_SIGNAL, DEFAULT_KILL_AFTER, MAX_KILL_AFTER,
                               BadSignal, kill_after, signal_name)
from bbx.pb.liveness import KEEPALIVE_DEADLINE, KEEPALIVE_INTERVAL
from bbx.pb.tls import resolve_files

from . import selection
from .tomlcheck import ConfigError, Loader, parse_toml

CONFIG_NAME = "master.toml"
DEFAULT_LISTEN = "tcp:9989:interface=127.0.0.1"
# Buildbot 4.3 sends its keepalive print once an hour (docs/protocol.md §4.4) and never declares a
# silent peer gone; bbx probes every 30 s and notices a vanished slave within 90 s
# (bbx/pb/liveness.py).
DEFAULT_KEEPALIVE_INTERVAL = float(KEEPALIVE_INTERVAL)
DEFAULT_KEEPALIVE_TIMEOUT = float(KEEPALIVE_DEADLINE)
# Seconds a connection has to log in before the master closes it (bbx/master/gate.py).
DEFAULT_LOGIN_TIMEOUT = 30.0
# Connections the kernel completes and holds for the master to accept (listen(2)'s backlog).
# Twisted's default is 50: a storm of slaves overflows it and the rest sit in SYN retries.
# Linux caps it at net.core.somaxconn (4096 since Linux 5.4).
DEFAULT_LISTEN_BACKLOG = 4096
# Attach sequences (print, info, builder list: docs/protocol.md §4.1) the master runs at once; later
# logins wait their turn in order (bbx/master/admission.py).
DEFAULT_MAX_ATTACHING = 100
DEFAULT_LOG = "master.log"
DEFAULT_CONTROL_USER = "admin"
DEFAULT_SLAVE = "local"

# Characters Buildbot replaces with '_' to derive a builddir from a builder name
# (docs/protocol.md §4.1 step 2.4, buildbot util/__init__.py safeTranslate).
_UNSAFE_BUILDDIR = re.compile(r"[\t !#$%&'()*+,./:;<=>?@\[\\\]^{|}~]")

# The build history store, relative to the master's directory (bbx/master/store.py); or
# "sqlite:PATH", or a PostgreSQL URL shared by several masters (bbx/master/store_location.py).
DEFAULT_DB = "bbx.sqlite"
# Several masters on one PostgreSQL store: a master whose heartbeat stops is declared dead by
# another within this many seconds, and its running builds are retried elsewhere. Buildbot
# gives a master 3 × its 10 s poll interval; 30 s is the same deadline.
DEFAULT_HEARTBEAT_TIMEOUT = 30.0
# How often a request whose build lost its slave (result RETRY) is queued again.
DEFAULT_RETRY_LOST = 1
# Builds a slave runs at once, across its builders (Buildbot's Worker max_builds is unlimited
# by default; a bbx slave runs one command per builder, and one build at a time is the safe
# default for a machine that builds).
DEFAULT_MAX_BUILDS = 1
# Step defaults, from Buildbot 4.3: ShellCommand takes ResultComputingConfigMixin's
# (flunkOnFailure=True, haltOnFailure=False; process/results.py), file transfers set
# haltOnFailure=True (steps/transfer.py:51). workdir "build" and timeout 1200 are what a
# Buildbot master sends with every shell command (docs/protocol.md §5.4).
DEFAULT_STEP_WORKDIR = "build"
DEFAULT_STEP_TIMEOUT = 1200.0

_STEP_KEYS = ("name", "command", "workdir", "env", "timeout", "maxTime", "haltOnFailure",
              "flunkOnFailure", "warnOnFailure", "alwaysRun", "logEnviron", "upload", "download",
              "interruptSignal", "sigtermTime")
_STEP_FLAGS = ("haltOnFailure", "flunkOnFailure", "warnOnFailure", "alwaysRun", "logEnviron")


@dataclass(frozen=True)
class SlaveConfig:
    """One slave the master accepts: its login name, password, how many builds it runs at
    once, and its tags (the slave may offer more at attach: bbx/master/selection.py)."""

    name: str
    password: str
    max_builds: int = DEFAULT_MAX_BUILDS
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepConfig:
    """One step of a builder: a shell command, or a file transfer.

    kind "shell": `command` (list = exec, str = /bin/sh -c) in `workdir` with `env`,
    `timeout` (s without output, None = none) and `max_time`.
    kind "upload" (slave -> master) / "download" (master -> slave): `src` and `dest`; a
    master-side path is relative to the master's directory, a slave-side one to `workdir`
    inside the builder's directory. The flags are Buildbot's, with Buildbot's defaults.
    """

    name: str
    kind: str
    command: tuple[str, ...] | str | None = None
    workdir: str = DEFAULT_STEP_WORKDIR
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = DEFAULT_STEP_TIMEOUT
    max_time: float | None = None
    halt_on_failure: bool = False
    flunk_on_failure: bool = True
    warn_on_failure: bool = False
    always_run: bool = False
    log_environ: bool = True  # the slave lists the command's environment in its header
    # An interrupt (bbx cancel, bbx run's Ctrl-C, a timeout) sends this signal to the tree, then
    # SIGKILL after sigterm_time s: bbx's meaning of the two keys (bbx/pb/interrupts.py).
    interrupt_signal: str = DEFAULT_INTERRUPT_SIGNAL
    sigterm_time: float = DEFAULT_KILL_AFTER
    src: str | None = None
    dest: str | None = None


@dataclass(frozen=True)
class BuilderConfig:
    """One builder: which slaves may run it — by name (`slaves`) or by tags, all of which a
    slave must have (bbx/master/selection.py) — and the directory it uses on them."""

    name: str
    slaves: tuple[str, ...]
    builddir: str
    steps: tuple[StepConfig, ...] = ()
    tags: tuple[str, ...] = ()

    @functools.cached_property
    def slave_set(self) -> frozenset[str]:
        """`slaves` as a set: "is this slave named?" is asked per slave and attach, and a scan
        of a tuple of thousands made a 10,000-slave master quadratic."""
        return frozenset(self.slaves)


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
    db: str = DEFAULT_DB
    retry_lost: int = DEFAULT_RETRY_LOST
    http: str = ""  # a server endpoint for /metrics and /healthz (bbx/master/http.py); "" = none
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    name: str = ""
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    listen_backlog: int = DEFAULT_LISTEN_BACKLOG
    max_attaching: int = DEFAULT_MAX_ATTACHING

    @property
    def store_location(self):
        """Where the store lives (bbx/master/store_location.py): a SQLite path relative to
        the master's directory (the config file's), or a PostgreSQL URL."""
        from . import store_location

        return store_location.parse(self.db, self.path.parent)

    @property
    def db_path(self) -> Path | None:
        """The SQLite store file, or None when the store is PostgreSQL."""
        return self.store_location.path

    @property
    def master_name(self) -> str:
        """This master's name among several: `name`, or Buildbot's default host:basedir."""
        if self.name:
            return self.name
        import socket

        return f"{socket.gethostname()}:{self.path.parent.absolute()}"

    def slave(self, name: str) -> SlaveConfig | None:
        return next((s for s in self.slaves if s.name == name), None)

    def builder(self, name: str) -> BuilderConfig | None:
        return next((b for b in self.builders if b.name == name), None)

    def control_user(self, name: str) -> ControlUser | None:
        return next((u for u in self.control_users if u.name == name), None)


def workdir_problem(workdir: str) -> str | None:
    """Why `workdir` may not be a command's directory, or None when it may.

    One rule for a step's `workdir` in master.toml and for `bbx run --workdir`: a path
    relative to the builder's directory on the slave, never absolute and never with `..`,
    so neither a config nor an operator can aim a command outside the builder's directory.
    """
    if not isinstance(workdir, str) or not workdir.strip():
        return "is empty"
    if os.path.isabs(workdir) or workdir.startswith("~") or ".." in Path(workdir).parts:
        return f"{workdir!r} leaves the builder's directory"
    return None


def safe_builddir(name: str) -> str:
    """The builddir Buildbot derives from a builder name."""
    return _UNSAFE_BUILDDIR.sub("_", name)


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
    data = parse_toml(text, path)
    ld = Loader(path, text)
    if not data:
        raise ConfigError(f"{path}: is empty, so no slave and no operator could log in; "
                          f"write one with `bbx master create {path.parent}` (or --force to "
                          "replace this file)")

    for key in data:
        if key not in ("master", "slaves", "builders", "control"):
            raise ld.fail(ld.where.line(f"[{key}]") or ld.where.line(None, key), key,
                          "is not a known section",
                          "use only [master], [[slaves]], [[builders]] and [control]")

    master = data.get("master", {})
    if not isinstance(master, dict):
        raise ld.fail(ld.where.line(None, "master"), "master", "must be a table", "write it as [master]")
    ld.unknown(master, ("listen", "keepalive_interval", "keepalive_timeout", "login_timeout",
                        "log", "db", "retry_lost", "http", "name", "heartbeat_timeout",
                        "listen_backlog", "max_attaching"),
               "[master]")
    listen = ld.string(master, "listen", "[master]", required=False, default=DEFAULT_LISTEN,
                       label="master.listen")
    # An ssl: listen string's key and certificate files are relative to the master's directory.
    listen = resolve_files(listen, Path(path).parent.absolute())
    interval = ld.positive(master, "keepalive_interval", "[master]", DEFAULT_KEEPALIVE_INTERVAL)
    timeout = ld.positive(master, "keepalive_timeout", "[master]", DEFAULT_KEEPALIVE_TIMEOUT)
    login_timeout = ld.positive(master, "login_timeout", "[master]", DEFAULT_LOGIN_TIMEOUT)
    if timeout <= interval:
        raise ld.fail(ld.where.line("[master]", "keepalive_timeout"), "master.keepalive_timeout",
                      f"({timeout:g}) must be longer than keepalive_interval ({interval:g})",
                      "a slave answers each keepalive, so allow at least two intervals of silence")
    log = ld.string(master, "log", "[master]", required=False, default=DEFAULT_LOG, label="master.log")
    db = ld.string(master, "db", "[master]", required=False, default=DEFAULT_DB, label="master.db")
    from . import store_location

    try:
        store_location.parse(db, path.parent)
    except ValueError as e:
        raise ld.fail(ld.where.line("[master]", "db"), "master.db", str(e),
                      'see "Several masters" in the README for PostgreSQL') from None
    name = ld.string(master, "name", "[master]", required=False, default="", label="master.name")
    if name != name.strip() or any(c in name for c in "\n\r\t"):
        raise ld.fail(ld.where.line("[master]", "name"), "master.name",
                      f"{name!r} has leading, trailing or control white space",
                      'write e.g. name = "master-a"')
    heartbeat_timeout = ld.positive(master, "heartbeat_timeout", "[master]",
                                    DEFAULT_HEARTBEAT_TIMEOUT)
    http = ld.string(master, "http", "[master]", required=False, default="", label="master.http")
    retry_lost = ld.count(master, "retry_lost", "[master]", DEFAULT_RETRY_LOST, "master.retry_lost",
                          minimum=0)
    backlog = ld.count(master, "listen_backlog", "[master]", DEFAULT_LISTEN_BACKLOG,
                       "master.listen_backlog")
    max_attaching = ld.count(master, "max_attaching", "[master]", DEFAULT_MAX_ATTACHING,
                             "master.max_attaching")

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
                        builders=tuple(builders), control_users=tuple(control), db=db,
                        retry_lost=retry_lost, http=http, login_timeout=login_timeout,
                        name=name, heartbeat_timeout=heartbeat_timeout,
                        listen_backlog=backlog, max_attaching=max_attaching)


def _load_slaves(ld: Loader, items: Any) -> list[SlaveConfig]:
    if not isinstance(items, list):
        raise ld.fail(ld.where.line(None, "slaves"), "slaves", "must be an array of tables",
                      "write each slave as a [[slaves]] block")
    slaves: list[SlaveConfig] = []
    seen: set[str] = set()  # a set, not a scan of `slaves`: 10,000 slaves load in well under 1 s
    for index, item in enumerate(items):
        header = "[[slaves]]"
        if not isinstance(item, dict):
            raise ld.fail(ld.where.line(None, "slaves"), f"slaves[{index}]", "must be a table",
                          "write each slave as a [[slaves]] block")
        ld.unknown(item, ("name", "password", "max_builds", "tags"), header, index)
        name = ld.string(item, "name", header, index, label=f"slaves[{index}].name")
        password = ld.string(item, "password", header, index, label=f"slaves[{index}].password")
        max_builds = ld.count(item, "max_builds", header, DEFAULT_MAX_BUILDS,
                              f"slaves[{index}].max_builds", index)
        tags = selection.load_tags(ld, item, header, index, f"slaves[{index}].tags")
        if name in seen:
            raise ld.fail(ld.where.line(header, "name", index), f"slaves[{index}].name",
                          f"slave {name!r} is configured twice", "give each slave a unique name")
        seen.add(name)
        slaves.append(SlaveConfig(name, password, max_builds, tags))
    return slaves


def _load_builders(ld: Loader, items: Any, slaves: list[SlaveConfig]) -> list[BuilderConfig]:
    if not isinstance(items, list):
        raise ld.fail(ld.where.line(None, "builders"), "builders", "must be an array of tables",
                      "write each builder as a [[builders]] block")
    known = frozenset(s.name for s in slaves)
    builders: list[BuilderConfig] = []
    seen: set[str] = set()  # builder names so far: a farm may have thousands
    for index, item in enumerate(items):
        header = "[[builders]]"
        label = f"builders[{index}]"
        if not isinstance(item, dict):
            raise ld.fail(ld.where.line(None, "builders"), label, "must be a table",
                          "write each builder as a [[builders]] block")
        if "max_builds" in item:
            raise ld.fail(ld.where.line(header, "max_builds", index), f"{label}.max_builds",
                          "is a setting of each slave (builds it runs at once, across builders)",
                          "move it to the [[slaves]] block of the slave it limits")
        ld.unknown(item, ("name", "slaves", "builddir", "steps"), header, index)
        name = ld.string(item, "name", header, index, label=f"{label}.name")
        if name in seen:
            raise ld.fail(ld.where.line(header, "name", index), f"{label}.name",
                          f"builder {name!r} is configured twice", "give each builder a unique name")
        names, tags = selection.load_selection(ld, item, header, index, label, known)
        builddir = ld.string(item, "builddir", header, index, required=False,
                             default=safe_builddir(name), label=f"{label}.builddir")
        if os.path.isabs(builddir) or ".." in Path(builddir).parts:
            raise ld.fail(ld.where.line(header, "builddir", index), f"{label}.builddir",
                          f"{builddir!r} leaves the slave's basedir",
                          "use a relative directory name")
        steps = _load_steps(ld, item.get("steps", []), index, label)
        builders.append(BuilderConfig(name, names, builddir, steps, tags))
        seen.add(name)
    return builders


def _load_steps(ld: Loader, items: Any, builder_index: int, builder_label: str
                ) -> tuple[StepConfig, ...]:
    """The [[builders.steps]] of one builder, in order; names made unique as Buildbot does."""
    where = ld.where.line("[[builders]]", "steps", builder_index)
    if not isinstance(items, list):
        raise ld.fail(where, f"{builder_label}.steps", "must be an array of tables",
                      "write each step as a [[builders.steps]] block under its builder")
    # [[builders.steps]] headers of every builder share one numbering in the text.
    before = _steps_before(ld, builder_index)
    steps: list[StepConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        label = f"{builder_label}.steps[{index}]"
        header = "[[builders.steps]]"
        at = before + index
        if not isinstance(item, dict):
            raise ld.fail(where, label, "must be a table", "write it as a [[builders.steps]] block")
        for key in item:
            if key not in _STEP_KEYS:
                raise ld.fail(ld.where.line(header, key, at), f"{label}.{key}",
                              "is not a known step key",
                              f"remove it (known keys: {', '.join(sorted(_STEP_KEYS))})")

        def line(key=None):
            return ld.where.line(header, key, at)

        transfers = [k for k in ("upload", "download") if k in item]
        if len(transfers) + ("command" in item) != 1:
            raise ld.fail(line(), label, "needs exactly one of command, upload or download",
                          'write e.g. command = ["make", "check"] or '
                          'upload = { src = "out.tar", dest = "artifacts/out.tar" }')
        kind = transfers[0] if transfers else "shell"
        flags = {}
        for key in _STEP_FLAGS:
            if key in item and not isinstance(item[key], bool):
                raise ld.fail(line(key), f"{label}.{key}", f"must be true or false, not {item[key]!r}",
                              f"write {key} = true")
        defaults = {"haltOnFailure": kind != "shell", "flunkOnFailure": True,
                    "warnOnFailure": False, "alwaysRun": False, "logEnviron": True}
        for key, default in defaults.items():
            flags[key] = item.get(key, default)
        workdir = ld.string(item, "workdir", header, at, required=False,
                            default=DEFAULT_STEP_WORKDIR, label=f"{label}.workdir")
        problem = workdir_problem(workdir)
        if problem is not None:
            raise ld.fail(line("workdir"), f"{label}.workdir", problem,
                          "use a path relative to the builder's directory, without '..'")
        env = item.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ld.fail(line("env"), f"{label}.env", "must be a table of strings",
                          'write env = { CC = "clang" }')
        timeout = _seconds(ld, item, "timeout", DEFAULT_STEP_TIMEOUT, line, label)
        max_time = _seconds(ld, item, "maxTime", None, line, label)
        interrupt_signal, sigterm_time = _interrupt(ld, item, line, label)
        command = src = dest = None
        if kind == "shell":
            command = item["command"]
            if isinstance(command, list):
                if not command or not all(isinstance(c, str) for c in command):
                    raise ld.fail(line("command"), f"{label}.command",
                                  "must be a non-empty list of strings or a string",
                                  'write command = ["make", "check"] or command = "make && make check"')
                command = tuple(command)
            elif not isinstance(command, str) or not command.strip():
                raise ld.fail(line("command"), f"{label}.command",
                              "must be a non-empty list of strings or a string",
                              'write command = ["make", "check"] or command = "make && make check"')
            default_name = (command[0] if isinstance(command, tuple)
                            else command.split()[0]).rsplit("/", 1)[-1]
        else:
            spec = item[kind]
            if not isinstance(spec, dict) or set(spec) != {"src", "dest"} or not all(
                    isinstance(v, str) and v.strip() for v in spec.values()):
                raise ld.fail(line(kind), f"{label}.{kind}", "must be a table with src and dest "
                              "(non-empty strings) and nothing else",
                              f'write {kind} = {{ src = "...", dest = "..." }}')
            src, dest = spec["src"], spec["dest"]
            master_side = dest if kind == "upload" else src
            if os.path.isabs(master_side) or ".." in Path(master_side).parts:
                raise ld.fail(line(kind), f"{label}.{kind}", f"{master_side!r} leaves the "
                              "master's directory", "use a path relative to the master's directory")
            default_name = kind
        name = item.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise ld.fail(line("name"), f"{label}.name", "must be a non-empty string",
                          'write name = "compile"')
        unique, n = name, 1
        while unique in seen:  # Buildbot appends _1, _2 ... to repeated step names
            unique = f"{name}_{n}"
            n += 1
        seen.add(unique)
        steps.append(StepConfig(
            name=unique, kind=kind, command=command, workdir=workdir,
            env=tuple(sorted(env.items())), timeout=timeout, max_time=max_time,
            halt_on_failure=flags["haltOnFailure"], flunk_on_failure=flags["flunkOnFailure"],
            warn_on_failure=flags["warnOnFailure"], always_run=flags["alwaysRun"],
            log_environ=flags["logEnviron"], src=src,
            dest=dest, interrupt_signal=interrupt_signal, sigterm_time=sigterm_time))
    return tuple(steps)


def _steps_before(ld: Loader, builder_index: int) -> int:
    """How many [[builders.steps]] headers precede builder number `builder_index` in the text."""
    builders = ld.where.header_lines("[[builders]]")
    steps = ld.where.header_lines("[[builders.steps]]")
    if builder_index >= len(builders):
        return len(steps)
    return bisect.bisect_left(steps, builders[builder_index])


def _seconds(ld: Loader, item: dict, key: str, default, line, label):
    if key not in item:
        return default
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ld.fail(line(key), f"{label}.{key}", f"must be a positive number of seconds, not "
                      f"{value!r}", f"write e.g. {key} = 600")
    return float(value)


def _interrupt(ld: Loader, item: dict, line, label) -> tuple[str, float]:
    """A step's interruptSignal (a signal name) and sigtermTime (s before SIGKILL, 0 = at once)."""
    signal_value = item.get("interruptSignal", DEFAULT_INTERRUPT_SIGNAL)
    try:
        name = signal_name(signal_value) if isinstance(signal_value, str) else None
    except BadSignal:
        name = None
    if name is None:
        raise ld.fail(line("interruptSignal"), f"{label}.interruptSignal",
                      f"{signal_value!r} is not a signal name", 'write interruptSignal = "TERM"')
    grace = item.get("sigtermTime", DEFAULT_KILL_AFTER)
    try:
        if isinstance(grace, bool):
            raise ValueError(grace)
        grace = kill_after(grace)
    except ValueError:
        raise ld.fail(line("sigtermTime"), f"{label}.sigtermTime",
                      f"must be seconds from 0 to {MAX_KILL_AFTER:g}, not {grace!r}",
                      "write e.g. sigtermTime = 10") from None
    return name, grace


def _load_control(ld: Loader, control: Any) -> list[ControlUser]:
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
        "# Seconds a new connection has to log in before it is closed.",
        f"# login_timeout = {int(DEFAULT_LOGIN_TIMEOUT)}",
        "# Connections the kernel may hold for the master to accept during a storm of",
        "# (re)connecting slaves; Linux caps it at net.core.somaxconn (cat",
        "# /proc/sys/net/core/somaxconn; 4096 by default). A listen string's own backlog= wins.",
        f"# listen_backlog = {DEFAULT_LISTEN_BACKLOG}",
        "# Attach sequences run at once; later slaves wait their turn, in order, so a storm",
        "# cannot starve the slaves already attached.",
        f"# max_attaching = {DEFAULT_MAX_ATTACHING}",
        "# Log file, relative to this directory.",
        f'# log = "{DEFAULT_LOG}"',
        '# http = "tcp:9100:interface=127.0.0.1"   # /metrics and /healthz (or --http)',
        "# Build history: a SQLite file relative to this directory, or a PostgreSQL URL",
        '# shared by several masters ("postgresql://user:password@host/dbname").',
        f'# db = "{DEFAULT_DB}"',
        "# This master's name among several on one PostgreSQL store (default: host:directory),",
        "# and how soon another master declares it dead once its heartbeat stops.",
        '# name = "master-a"',
        f"# heartbeat_timeout = {int(DEFAULT_HEARTBEAT_TIMEOUT)}",
        "# How often a build request whose slave was lost mid-build is queued again.",
        f"# retry_lost = {DEFAULT_RETRY_LOST}",
        "",
        "# One [[slaves]] block per machine allowed to connect. A slave logs in with this",
        "# name and password (`bbx slave create` or `buildbot-worker create-worker`);",
        '# tags = ["linux", "x86_64"] say what it is (the slave may offer more itself).',
    ]
    for slave in slaves:
        out += ["[[slaves]]", f"name = {_quote(slave.name)}", f"password = {_quote(slave.password)}"]
        if slave.tags:
            out.append(f"tags = [{', '.join(_quote(t) for t in slave.tags)}]")
        out.append("")
    out += [
        "# One [[builders]] block per kind of job: the slaves that may run it and the",
        "# directory it uses inside each slave's basedir. Slaves by name, by tags (all must",
        '# match), or both: slaves = ["a"], slaves = { tags = ["linux", "docker"] },',
        '# slaves = { names = ["a"], tags = ["linux"] }. Steps run by `bbx build` go in',
        "# [[builders.steps]] blocks after their builder, e.g.:",
        "#   [[builders.steps]]",
        '#   name = "test"',
        '#   command = ["make", "check"]     # or a string, run with /bin/sh -c',
        "#   haltOnFailure = true",
        "#   [[builders.steps]]",
        '#   upload = { src = "build/out.tar", dest = "artifacts/out.tar" }',
    ]
    for builder in builders:
        names = "[" + ", ".join(_quote(n) for n in builder.slaves) + "]"
        if builder.tags:
            tags = "[" + ", ".join(_quote(t) for t in builder.tags) + "]"
            names = f"{{ names = {names}, tags = {tags} }}" if builder.slaves else \
                f"{{ tags = {tags} }}"
        out += ["[[builders]]", f"name = {_quote(builder.name)}", f"slaves = {names}",
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
