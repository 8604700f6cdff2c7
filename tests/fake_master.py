"""A stand-in master for CLI tests: the control perspective contract with canned answers.

    python tests/fake_master.py [--user admin] [--password sekrit] [--listen tcp:0:interface=127.0.0.1]
                                [--endpoint-file PATH]

Prints `listening on <client endpoint>` once bound (and writes it to --endpoint-file), then
one line per notable call (`interrupt: <why>`), flushed, so a test can wait on them.
Builders: `b` (slave `local` attached), `idle` (no slave attached), `slow` (ping times out).
`run` on `b` recognises a few commands:
  ["sleep", ...]    header + "started\\n", then waits for an interrupt; completes rc -1
  ["stubborn", ...] like sleep, but never completes, even when interrupted
  ["lose", ...]     some output, then completes with lost=True
  ["big", N]        N bytes of stdout in 64 KiB pieces, each update awaited (flow control)
  anything else     STDOUT_PIECES / a stderr line, rc 3 (see RUN_STDOUT)
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.cred import checkers, portal
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.spread import pb
from zope.interface import implementer

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from bbx.pb import control  # noqa: E402
from bbx.pb.updates import pair  # noqa: E402

# What `run` sends on stdout, piece by piece: a CR progress line, UTF-8, no final newline.
STDOUT_PIECES = ["héllo wörld ✓\n", "progress 50%\r", "progress 100%\r\n", "tail without newline"]
RUN_STDOUT = "".join(STDOUT_PIECES)
RUN_STDERR = "warning: something odd\n"
RUN_RC = 3

ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/home/build", "GITHUB_TOKEN": "ghp_verysecret",
           "AWS_SECRET_ACCESS_KEY": "aws-hidden", "DB_PASSWORD": "hunter2", "LANG": "C.UTF-8"}
# The slave "local" has been connected this long whenever it is asked (tests expect "3m ago"),
# however long the fake master has been running: on a loaded machine that can be minutes.
CONNECTED_FOR = 180


def connected_since() -> float:
    return time.time() - CONNECTED_FOR


def say(line: str) -> None:
    print(line, flush=True)


class Handle(pb.Referenceable):
    """The running command, as handed to the CLI: remote_interrupt(why, now) → None."""

    def __init__(self):
        self.interrupted = defer.Deferred()

    def remote_interrupt(self, why, now=False):
        say(f"interrupt: {why}" + (" (now)" if now else ""))
        if not self.interrupted.called:
            self.interrupted.callback(why)


class Control(pb.Avatar):
    """ping / info / slaves / builders / run with canned data (see the module docstring)."""

    def perspective_ping(self, builder, count=1):
        self._check(builder)
        if builder == "idle":
            raise control.NoSlaveAttached("no slave of builder 'idle' is attached (its slaves: lonely)")
        if builder == "slow":
            raise control.SlaveTimeout("slave 'local' did not answer the ping within 10 s")
        return {"builder": builder, "slave": "local", "rtts": [0.0012 + i * 0.0001 for i in range(count)]}

    def perspective_info(self, slave=None):
        if slave not in (None, "local"):
            raise control.UnknownSlave(f"no slave named {slave!r} (slaves: local, lonely)")
        return {"name": "local", "dialect": "worker", "connected_since": connected_since(),
                "peer": "127.0.0.1:50000",
                "info": {"environ": dict(ENVIRON), "system": "posix", "basedir": "/srv/slave",
                         "numcpus": 4, "version": "4.3.0", "admin": "Ops <ops@example.org>",
                         "host": "a test box", "os_release": "6.1",
                         "worker_commands": {"shell": "3.3", "mkdir": "3.3"}}}

    def perspective_slaves(self, connected=None, counts=False):
        everyone = [
            {"name": "local", "connected": True, "connected_since": connected_since(),
             "builders": ["b", "slow"],
             "dialect": "worker", "last_message": time.time() - 5, "peer": "127.0.0.1:50000",
             "version": "4.3.0"},
            {"name": "lonely", "connected": False, "connected_since": None, "builders": ["idle"],
             "dialect": None, "last_message": None, "peer": None, "version": None},
        ]
        if counts:
            up = sum(1 for x in everyone if x["connected"])
            return {"configured": len(everyone), "connected": up, "disconnected": len(everyone) - up}
        return [x for x in everyone if connected is None or x["connected"] == connected]

    def perspective_builders(self):
        return [{"name": "b", "slaves": ["local"], "builddir": "b", "attached": ["local"]},
                {"name": "idle", "slaves": ["lonely"], "builddir": "idle", "attached": []}]

    def perspective_run(self, builder, observer, command, workdir=None, env=None, timeout=None,
                        max_time=None, log_environ=False, interrupt_signal="TERM",
                        kill_after=10.0, wait_for_slave=True):
        self._check(builder)
        if builder == "idle":
            raise control.NoSlaveAttached("no slave of builder 'idle' is attached")
        say(f"run: {command!r} workdir={workdir!r} env={env!r}")
        handle = Handle()
        argv = command if isinstance(command, list) else ["sh", "-c", command]
        reactor.callLater(0, self._stream, observer, argv, handle)
        return {"slave": "local", "command_id": "1", "handle": handle}

    @defer.inlineCallbacks
    def _stream(self, observer, argv, handle):
        send = lambda *pairs: observer.callRemote("update", [pair(k, v) for k, v in pairs])  # noqa: E731
        yield send(("header", f"running {argv!r}\n environment:\n  GITHUB_TOKEN=ghp_verysecret\n  LANG=C\n"))
        if argv[0] == "stubborn":
            yield send(("stdout", "started\n"))
            return
        if argv[0] == "sleep":
            yield send(("stdout", "started\n"))
            why = yield handle.interrupted
            yield send(("header", f"killing: {why}\n"), ("rc", -1))
            result = {"rc": -1, "failure": None, "interrupted": True, "lost": False}
        elif argv[0] == "lose":
            yield send(("stdout", "partial\n"))
            result = {"rc": None, "failure": "lost the connection to slave local",
                      "interrupted": False, "lost": True}
        elif argv[0] == "big":
            left, piece = int(argv[1]), "x" * 65535 + "\n"
            while left > 0:
                yield send(("stdout", piece[:left]))
                left -= len(piece)
            yield send(("rc", 0))
            result = {"rc": 0, "failure": None, "interrupted": False, "lost": False}
        else:
            for text in STDOUT_PIECES[:2]:
                yield send(("stdout", text))
            yield send(("stderr", RUN_STDERR))
            yield send(*[("stdout", t) for t in STDOUT_PIECES[2:]])
            yield send(("rc", RUN_RC), ("elapsed", 0.25))
            result = {"rc": RUN_RC, "failure": None, "interrupted": False, "lost": False}
        yield observer.callRemote("complete", result)

    @staticmethod
    def _check(builder):
        if builder not in ("b", "idle", "slow"):
            raise control.UnknownBuilder(f"no builder named {builder!r} (builders: b, idle, slow)")


@implementer(portal.IRealm)
class Realm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        return pb.IPerspective, Control(), lambda: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="sekrit")
    parser.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    parser.add_argument("--endpoint-file")
    args = parser.parse_args()
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(args.user.encode(), args.password.encode())
    factory = pb.PBServerFactory(portal.Portal(Realm(), [checker]))

    def listening(port):
        address = port.getHost()
        if hasattr(address, "port"):
            endpoint = f"tcp:host={address.host}:port={address.port}"
        else:
            endpoint = f"unix:path={address.name.decode() if isinstance(address.name, bytes) else address.name}"
        if args.endpoint_file:
            with open(args.endpoint_file, "w") as f:
                f.write(endpoint + "\n")
        say(f"listening on {endpoint}")

    serverFromString(reactor, args.listen).listen(factory).addCallbacks(
        listening, lambda f: (say(f"cannot listen: {f.getErrorMessage()}"), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main()
