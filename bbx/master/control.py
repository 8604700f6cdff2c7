"""ControlPerspective: what an operator's CLI may ask the master (bbx/pb/control.py names the errors)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb.control import CommandFailed, ControlError, NoSlaveAttached, UnknownBuilder, UnknownSlave

from .command import RemoteCommand, RemoteObserver

log = Logger()

# What a Buildbot 4.3 master sends with every shell command (PROTOCOL.md §5.4, §10.1 item 4);
# `timeout` (seconds without output) defaults to 1200 there.
DEFAULT_SHELL_TIMEOUT = 1200
DEFAULT_WORKDIR = "build"


def shell_args(command, workdir: str | None, env: dict | None, timeout: Any,
               max_time: float | None) -> dict:
    """The full shell argument dict a Buildbot 4.3 master would send."""
    return {
        "workdir": workdir or DEFAULT_WORKDIR,
        "command": command,
        "env": dict(env or {}),
        "want_stdout": True,
        "want_stderr": True,
        "logfiles": {},
        "timeout": timeout,
        "maxTime": max_time,
        "max_lines": None,
        "sigtermTime": None,
        "usePTY": False,
        "logEnviron": True,
        "initial_stdin": None,
        "interruptSignal": "KILL",
    }


class CommandHandle(pb.Referenceable):
    """Given to the CLI that started a command, so it can interrupt it."""

    def __init__(self, command: RemoteCommand):
        self.command = command

    def remote_interrupt(self, why: str = "interrupted by the operator"):
        """The CLI sends a reason (str); the command is interrupted; returns None at once.

        The command still ends through the observer's `complete` (PROTOCOL.md §6).
        """
        self.command.interrupt(why)
        return None


class ControlPerspective(pb.Avatar):
    """The avatar of one control user: ping, info, slaves, builders, run."""

    def __init__(self, user: str, master):
        self.user = user
        self.master = master  # the MasterService: .slaves, .builders, .reactor

    def _builder(self, name: str):
        builder = self.master.builders.get(name)
        if builder is None:
            choices = ", ".join(sorted(self.master.builders)) or "none"
            raise UnknownBuilder(f"no builder named {name!r} (configured: {choices})")
        return builder

    @defer.inlineCallbacks
    def perspective_ping(self, builder: str, count: int = 1):
        """Ping the slave of `builder` `count` times (each with a 10 s deadline).

        Returns {"builder": str, "slave": str, "rtts": [seconds, ...]}. Raises UnknownBuilder,
        NoSlaveAttached or SlaveTimeout.
        """
        b = self._builder(builder)
        sb = b.any_attached()
        rtts = []
        for _ in range(max(1, int(count))):
            rtt = yield sb.ping()
            rtts.append(rtt)
        return {"builder": b.name, "slave": sb.slave.name, "rtts": rtts}

    def perspective_info(self, slave: str | None = None):
        """What a slave reported about itself when it attached.

        Sends a slave name, or None for the only attached slave. Returns {"name", "dialect",
        "connected_since", "peer", "info": {raw info dict}}. Raises UnknownSlave,
        NoSlaveAttached, or ControlError when None is ambiguous.
        """
        slaves = self.master.slaves
        if slave is None:
            attached = [s for s in slaves.values() if s.link is not None]
            if not attached:
                raise NoSlaveAttached("no slave is attached")
            if len(attached) > 1:
                names = ", ".join(sorted(s.name for s in attached))
                raise ControlError(f"several slaves are attached ({names}); name one")
            persp = attached[0]
        else:
            persp = slaves.get(slave)
            if persp is None:
                choices = ", ".join(sorted(slaves)) or "none"
                raise UnknownSlave(f"no slave named {slave!r} (configured: {choices})")
            if persp.link is None:
                raise NoSlaveAttached(f"slave {slave} is not attached")
        link = persp.link
        return {"name": persp.name, "dialect": link.dialect.value, "connected_since": link.connected_since,
                "peer": link.peer, "info": link.info}

    def perspective_slaves(self):
        """No arguments. Returns one dict per configured slave: name, connected, connected_since,
        builders, dialect, last_message, peer, version."""
        return [s.summary() for s in self.master.slaves.values()]

    def perspective_builders(self):
        """No arguments. Returns one dict per builder: name, slaves, builddir, attached."""
        return [{"name": b.name, "slaves": list(b.config.slaves), "builddir": b.config.builddir,
                 "attached": b.attached()} for b in self.master.builders.values()]

    @defer.inlineCallbacks
    def perspective_run(self, builder: str, observer, command, workdir: str | None = None,
                        env: dict | None = None, timeout: Any = DEFAULT_SHELL_TIMEOUT,
                        max_time: float | None = None):
        """Run one shell command on a free slave of `builder`.

        Sends the builder name, an observer Referenceable (remote_update(updates) /
        remote_complete(result)), the command (list of str = exec, str = shell), workdir
        (None = "build"), env, timeout (s without output; None = none) and max_time.
        Returns once the slave started it: {"slave", "command_id", "handle"} where
        handle.callRemote("interrupt", why) interrupts. The observer gets every update
        envelope unchanged, then {"rc", "failure", "interrupted", "lost"}.
        Raises UnknownBuilder, NoSlaveAttached, SlaveBusy or CommandFailed.
        """
        b = self._builder(builder)
        sb = b.idle_slave_builder()
        if not isinstance(command, (str, list, tuple)) or not command:
            raise CommandFailed("the command is empty")
        args = shell_args(list(command) if isinstance(command, tuple) else command, workdir, env,
                          timeout, max_time)
        cmd = RemoteCommand(sb, "shell", args, self.master.reactor)
        if observer is not None:
            cmd.add_observer(RemoteObserver(
                observer, on_gone=lambda: cmd.interrupt("the watching client went away")))
        try:
            yield cmd.start()
        except Exception as e:
            raise CommandFailed(f"slave {sb.slave.name} could not start the command: "
                                f"{_message(e)}") from None
        log.info("{user} runs {command!r} on builder {builder} (slave {slave}, command {id})",
                 user=self.user, command=command, builder=b.name, slave=sb.slave.name, id=cmd.command_id)
        return {"slave": sb.slave.name, "command_id": cmd.command_id, "handle": CommandHandle(cmd)}


def _message(exc) -> str:
    remote = getattr(exc, "remoteType", None)
    text = str(exc.args[1] if remote is not None and len(exc.args) > 1 else exc)
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
