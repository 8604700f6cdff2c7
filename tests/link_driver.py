"""A PB port with nothing but the master's protocol adapter behind it, driven over stdin/stdout.

    python tests/link_driver.py NAME PASSWORD

Listens on 127.0.0.1 (port 0) and prints {"port": N}. When the slave NAME logs in, the
SlaveLink (bbx/master/link.py) runs the first half of the attach sequence (print "attached",
the info chain) and prints {"event": "attached", "dialect": ..., "version": ...}. Then each line
read from stdin is one JSON request, answered by one JSON line {"reply": n, ...}:

    {"n": 1, "op": "set_builder_list", "wanted": [["a", "a"], ...]} -> {"builders": [names]}
    {"n": 2, "op": "ping", "builder": "a"}                          -> {"rtt": s} | {"error": ...}
    {"n": 3, "op": "run", "builder": "a", "command": "sh script"}   -> {"started": id}
        and later, unasked: {"event": "complete", "id": id, "rc": rc, "stdout": text}

This lets tests call the adapter's methods one by one against a real peer (a buildslave
0.8.14, a bbx slave, a buildbot-worker 4.3) — the way a reconfiguration will.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    from twisted.cred import checkers, portal
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver
    from twisted.spread import pb
    from zope.interface import implementer

    from bbx.master.build import shell_args
    from bbx.master.link import SlaveLink
    from bbx.pb.banana import FastBroker
    from bbx.pb.endpoints import server_endpoint
    from bbx.pb.updates import iter_updates

    name, password = argv[:2]
    state: dict = {"link": None}

    def emit(obj) -> None:
        sys.stdout.write(json.dumps(obj, default=repr) + "\n")
        sys.stdout.flush()

    class Command:
        """Stands where a RemoteCommand would: collects what the slave reports."""

        def __init__(self, command_id: str):
            self.command_id = command_id
            self.rc = None
            self.stdout = ""

        def remote_update(self, updates):
            for key, value in iter_updates(updates):
                if key == "rc":
                    self.rc = value
                elif key == "stdout":
                    self.stdout += value
            return 0

        def remote_complete(self, failure=None):
            emit({"event": "complete", "id": self.command_id, "rc": self.rc,
                  "stdout": self.stdout, "failure": None if failure is None else str(failure)})

    class Avatar(pb.Avatar):
        def perspective_keepalive(self):
            """Keepalive from the slave; returns None."""

        def perspective_shutdown(self):
            """Shutdown request from the slave; returns None (ignored here)."""

    @implementer(portal.IRealm)
    class Realm:
        @defer.inlineCallbacks
        def requestAvatar(self, avatar_id, mind, *interfaces):
            link = SlaveLink(mind.broker, mind, reactor, slave=name)
            yield link.print("attached")
            info = yield link.fetch_info()
            state["link"] = link
            emit({"event": "attached", "dialect": link.dialect.value,
                  "version": info.get("version")})
            return pb.IPerspective, Avatar(), lambda: None

    commands = iter(range(1, 1_000_000))

    @defer.inlineCallbacks
    def handle(request: dict):
        link = state["link"]
        op = request["op"]
        if op == "set_builder_list":
            refs = yield link.set_builder_list([tuple(w) for w in request["wanted"]])
            return {"builders": sorted(refs)}
        if op == "ping":
            rtt = yield link.ping(request["builder"])
            return {"rtt": rtt}
        if op == "run":
            command = Command(str(next(commands)))
            args = shell_args(request["command"], None, {}, None, None, log_environ=False)
            yield link.start_command(request["builder"], command, command.command_id, "shell",
                                     args)
            return {"started": command.command_id}
        raise ValueError(f"unknown op {op!r}")

    class Requests(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            request = json.loads(line)
            d = handle(request)
            d.addCallbacks(lambda answer: emit({"reply": request["n"], **answer}),
                           lambda f: emit({"reply": request["n"], "error": f.getErrorMessage()}))

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(**{name: password.encode()})
    factory = pb.PBServerFactory(portal.Portal(Realm(), [checker]))
    factory.protocol = FastBroker  # the master's broker

    @defer.inlineCallbacks
    def listen():
        port = yield server_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        emit({"port": port.getHost().port})
        stdio.StandardIO(Requests())

    reactor.callWhenRunning(listen)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
