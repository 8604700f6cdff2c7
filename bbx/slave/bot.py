"""The Bot: the slave's mind, the object the master calls on the slave (docs/protocol.md §3.1).

It answers who this slave is (info, commands, version), keeps the builders the master asks
for, logs the master's messages and stops the slave when told to. Both the worker-era and the
slave-era method names are served, so a Buildbot 0.8 and a 4.3 master both attach.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

import bbx
from bbx.pb.dialect import Dialect, system_name
from bbx.pb.secrets import REDACTED
from bbx.slave.basedir import INFO_DIR
from bbx.slave.builder import SlaveBuilder
from bbx.slave.commands import registry
from bbx.slave.commands.base import DEFAULT_CONTEXT, CommandContext
from bbx.slave.redact import Secrets

log = Logger(namespace="bbx.slave")

OS_RELEASE = "/etc/os-release"

# The master's Bot.shutdown stops the slave this long after answering, so the answer still
# reaches the master (docs/protocol.md §3.1: buildbot-worker waits 0.2 s).
SHUTDOWN_DELAY = 0.2


def read_os_release(path: str = OS_RELEASE) -> dict[str, str]:
    """/etc/os-release as buildbot-worker reports it: KEY=value -> {"os_key": value}."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip("\r\n")
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, value = line.split("=", 1)
                if value:
                    out[f"os_{key.lower()}"] = value.strip('"')
    except OSError:
        pass
    return out


class Bot(pb.Referenceable):
    """The mind handed to the master at login; owns the builders, which outlive connections."""

    def __init__(self, basedir: str, reactor, *, shutdown: Callable[[], None] | None = None,
                 os_release: str = OS_RELEASE, context: CommandContext = DEFAULT_CONTEXT,
                 tags: tuple[str, ...] = ()):
        self.basedir = os.path.abspath(basedir)
        self.context = context
        self.reactor = reactor
        self._shutdown = shutdown  # None: stop the reactor
        self._os_release = os_release
        self.tags = tuple(tags)
        self.builders: dict[str, SlaveBuilder] = {}

    # -- called by the master ----------------------------------------------------------------

    def remote_print(self, message: str = "") -> float:
        """Log a message from the master. Gets `message` (str; Buildbot 4.3 passes it as a
        keyword). "attached", "ping" and "keepalive" arrive here. Returns this slave's clock
        (seconds since the epoch) where buildbot-worker returns None: masters ignore the
        answer, and a bbx master measures the clock offset from it (bbx/pb/clock.py)."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        log.info("message from master: {message}", message=message)
        return self.reactor.seconds()

    def info(self, dialect: Dialect = Dialect.WORKER) -> dict:
        """What getWorkerInfo / getSlaveInfo answer (docs/protocol.md §3.1)."""
        files: dict = {}
        info_dir = os.path.join(self.basedir, INFO_DIR)
        if os.path.isdir(info_dir):
            for entry in sorted(os.listdir(info_dir)):
                path = os.path.join(info_dir, entry)
                if os.path.isfile(path):
                    try:
                        with open(path, encoding="utf-8", errors="replace") as f:
                            files[entry] = f.read()
                    except OSError as e:
                        log.warn("cannot read {path}: {why}", path=path, why=e)
        files.update(read_os_release(self._os_release))
        files["environ"] = self.environ()
        files["system"] = system_name()
        files["basedir"] = self.basedir
        files["numcpus"] = multiprocessing.cpu_count()
        files["version"] = bbx.__version__
        files[dialect.info_key_commands] = registry.command_table(self.context.allowed)
        files["delete_leftover_dirs"] = False
        if self.tags:  # slave.toml's tags win over an info/tags file (docs/protocol.md §3.1)
            files["tags"] = list(self.tags)
        return files

    def environ(self) -> dict[str, str]:
        """The slave's environment as reported: secret-looking values (and their occurrences
        in other values) are REDACTED before they leave the host."""
        names = self.context.secret_names
        secrets = Secrets.from_environment(os.environ, names)
        return {name: REDACTED if name in names else secrets.text(value)
                for name, value in os.environ.items()}

    def remote_getWorkerInfo(self) -> dict:
        """Who this slave is. Gets nothing. Returns a dict: one str per file in info/ (admin,
        host, ...), os_* from /etc/os-release, environ (dict, secrets redacted), system
        (os.name), basedir, numcpus (int), version (str), worker_commands (name -> version, the
        allowed commands only), delete_leftover_dirs; and tags (list of str) when slave.toml
        has some."""
        return self.info(Dialect.WORKER)

    def remote_getSlaveInfo(self) -> dict:
        """The 0.8-era name of getWorkerInfo; the command table is under slave_commands.

        Gets nothing; returns the same dict as getWorkerInfo with that one key renamed."""
        return self.info(Dialect.SLAVE)

    def remote_getCommands(self) -> dict:
        """The commands this slave runs (and allows). Gets nothing; returns {name: version str}."""
        return registry.command_table(self.context.allowed)

    def remote_getVersion(self) -> str:
        """This slave's software version. Gets nothing; returns a str (bbx's version)."""
        return bbx.__version__

    def remote_setBuilderList(self, wanted) -> dict:
        """Make these builders, and only these, exist here.

        Gets `wanted`: a list of (builderName, builddir) pairs (tuples or lists). Creates or
        reuses one SlaveBuilder per name (making <basedir>/<builddir>), stops the others (killing
        their running command). Returns a dict builderName -> SlaveBuilder reference.
        """
        keep: dict[str, SlaveBuilder] = {}
        for item in wanted or ():
            name, builddir = (_text(x) for x in item)
            builder = self.builders.get(name)
            if builder is None:
                builder = SlaveBuilder(name, self.basedir, builddir, self.reactor,
                                       shutdown=self.remote_shutdown, context=self.context)
                log.info("builder {name} added (directory {dir})", name=name, dir=builddir)
            else:
                builder.set_builddir(builddir)
            keep[name] = builder
        for name, builder in self.builders.items():
            if name not in keep:
                log.info("builder {name} removed by the master", name=name)
                builder.stop("builder removed by the master")
        self.builders = keep
        self._note_leftover_dirs({b.builddir for b in keep.values()})
        return dict(keep)

    def remote_shutdown(self) -> None:
        """Stop this slave. Gets nothing; returns None, and the slave stops 0.2 s later."""
        log.info("the master asked this slave to shut down")
        self.reactor.callLater(SHUTDOWN_DELAY, self._stop)

    def _stop(self) -> None:
        (self._shutdown or self.reactor.stop)()

    # -- called by the connection and the service --------------------------------------------

    def connection_lost(self, why: str) -> None:
        """The master is gone: kill every running command; the builders stay (docs/protocol.md §4.6)."""
        for builder in self.builders.values():
            builder.stop(f"connection lost: {why}")

    def stop_all(self, why: str) -> defer.Deferred:
        """Kill every running command; fire once they have all ended."""
        waits = []
        for builder in self.builders.values():
            builder.stop(why)
            waits.append(builder.wait_idle())
        return defer.DeferredList(waits, consumeErrors=True)

    def _note_leftover_dirs(self, wanted: set[str]) -> None:
        try:
            entries = os.listdir(self.basedir)
        except OSError:
            return
        top = {d.split(os.sep)[0] for d in wanted}
        for entry in sorted(entries):
            if entry in top or entry == INFO_DIR or entry.startswith("."):
                continue
            if os.path.isdir(os.path.join(self.basedir, entry)):
                log.info("directory {entry} is not used by any builder (left in place)", entry=entry)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
