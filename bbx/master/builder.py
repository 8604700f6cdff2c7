"""Builders and the master-side SlaveBuilder: which slave runs what, and whether it is free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from bbx.pb.control import NoSlaveAttached, SlaveBusy

from .config import BuilderConfig

if TYPE_CHECKING:  # pragma: no cover
    from .link import SlaveLink
    from .slave import SlavePerspective

log = Logger()


class SlaveLoad:
    """How many builds each slave runs now, against its max_builds (across its builders).

    A `bbx run` command counts as a one-step build, so it takes a slot too.
    """

    def __init__(self, limits: dict[str, int]):
        self.limits = dict(limits)
        self.running: dict[str, int] = {}

    def has_room(self, slave: str) -> bool:
        return self.running.get(slave, 0) < self.limits.get(slave, 1)

    def take(self, slave: str) -> None:
        self.running[slave] = self.running.get(slave, 0) + 1

    def release(self, slave: str) -> None:
        self.running[slave] = max(0, self.running.get(slave, 0) - 1)


class Builder:
    """One configured builder and the SlaveBuilders of its currently attached slaves.

    `on_attach` (set by the build queue) is called with no arguments whenever a slave of this
    builder attaches, so queued requests can start.
    """

    def __init__(self, config: BuilderConfig, load: SlaveLoad | None = None):
        self.config = config
        self.slave_builders: dict[str, SlaveBuilder] = {}
        self.load = load if load is not None else SlaveLoad({})
        self.on_attach = None

    @property
    def name(self) -> str:
        return self.config.name

    def attached(self) -> list[str]:
        """Names of the attached slaves that may run this builder: those it names, in their
        configured order, then those its tags chose, by name."""
        named = [n for n in self.config.slaves if n in self.slave_builders]
        if len(named) == len(self.slave_builders):
            return named
        names = self.config.slave_set
        return named + sorted(n for n in self.slave_builders if n not in names)

    def attach(self, slave_builder: "SlaveBuilder") -> None:
        self.slave_builders[slave_builder.slave.name] = slave_builder
        if self.on_attach is not None:
            self.on_attach()

    def detach(self, slave_builder: "SlaveBuilder") -> None:
        if self.slave_builders.get(slave_builder.slave.name) is slave_builder:
            del self.slave_builders[slave_builder.slave.name]

    def any_attached(self) -> "SlaveBuilder":
        """The first attached SlaveBuilder; NoSlaveAttached when there is none."""
        for name in self.attached():
            return self.slave_builders[name]
        from .selection import describe

        raise NoSlaveAttached(f"builder {self.name} has no attached slave "
                              f"(configured: {describe(self.config)})")

    def free_slave_builder(self) -> "SlaveBuilder | None":
        """An attached SlaveBuilder that is idle on a slave below its max_builds, or None."""
        for name in self.attached():
            sb = self.slave_builders[name]
            if not sb.busy and sb.slave.takes_work and self.load.has_room(name):
                return sb
        return None

    def idle_slave_builder(self) -> "SlaveBuilder":
        """An attached SlaveBuilder free to build now; NoSlaveAttached or SlaveBusy otherwise."""
        candidates = [self.slave_builders[n] for n in self.attached()]
        if not candidates:
            self.any_attached()
        sb = self.free_slave_builder()
        if sb is not None:
            return sb
        if all(sb.slave.operator_state != "active" for sb in candidates):
            names = ", ".join(sb.slave.name for sb in candidates)
            raise SlaveBusy(f"every slave of builder {self.name} is paused or draining "
                            f"({names}); `bbx slave resume NAME` gives it work again")
        raise SlaveBusy(f"every slave of builder {self.name} is busy "
                        f"({', '.join(sb.slave.name for sb in candidates)}); try again when it ends")


class SlaveBuilder:
    """The master's side of one builder on one attached slave.

    Knows the connection (`link`, a SlaveLink) that reaches the slave's builder of the same
    name, and holds the one command and the one build that may run on it.
    """

    def __init__(self, builder: Builder, slave: "SlavePerspective", link: "SlaveLink", reactor):
        self.builder = builder
        self.slave = slave
        self.link = link
        self.reactor = reactor
        self.command = None  # the RemoteCommand running here, if any
        self.build = None    # the Build holding this slave builder, if any
        self.detached = False

    @property
    def name(self) -> str:
        """The builder's name, which is also its name on the slave."""
        return self.builder.name

    @property
    def busy(self) -> bool:
        return self.command is not None or self.build is not None

    def ping(self) -> defer.Deferred:
        """Ping the slave once; fire with the round-trip time in seconds.

        Errbacks with NoSlaveAttached or SlaveTimeout (the link's deadline, PING_TIMEOUT).
        """
        if self.detached or self.link.gone:
            return defer.fail(NoSlaveAttached(f"slave {self.slave.name} is not attached"))
        return self.link.ping(self.name)

    def lost(self) -> None:
        """The slave went away: fail the running command as lost, and tell the build."""
        self.detached = True
        self.builder.detach(self)
        why = f"lost the connection to slave {self.slave.name}"
        build = self.build
        if build is not None:
            build.slave_lost(why)
        command, self.command = self.command, None
        if command is not None:
            command.lost(why)
