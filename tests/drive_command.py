"""Run one slave command outside any connection and print what it reports, as JSON lines.

    python tests/drive_command.py BUILDER_DIR NAME ARGS_JSON [--interrupt-after S]

Each update pair the command sends is printed as {"update": [key, value]}; the end as
{"complete": null} or {"complete": "<failure text>"}. Transfer commands get local stand-ins
for the master's writer/reader: a writer named in ARGS_JSON as {"writer": "<path>"} appends
to that file (and "unpack" extracts a tar there), a reader {"reader": "<path>"} reads it.
Used by the command tests: real processes and files, only the PB hop left out.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile

from twisted.internet import defer, task

from bbx.pb import dialect
from bbx.pb.updates import UpdateBatcher, iter_updates
from bbx.slave.commands import registry


class _Local:
    """A stand-in for a remote reference: callRemote runs remote_<name> and returns a Deferred."""

    def callRemote(self, name, *args, **kwargs):
        return defer.maybeDeferred(getattr(self, "remote_" + name), *args, **kwargs)


class FileWriter(_Local):
    def __init__(self, path):
        self.path = path
        self.buf = open(path + ".tmp", "wb")
        self.calls = []

    def remote_write(self, data):
        self.calls.append(("write", len(data)))
        self.buf.write(data)

    def remote_utime(self, times):
        self.calls.append(("utime", tuple(times)))
        self._utime = tuple(times)

    def remote_close(self):
        self.calls.append(("close",))
        if not self.buf.closed:
            self.buf.close()
            os.replace(self.path + ".tmp", self.path)
        if getattr(self, "_utime", None):
            os.utime(self.path, self._utime)

    def remote_unpack(self):
        self.remote_close()
        self.calls.append(("unpack",))
        target = self.path + ".d"
        with tarfile.open(self.path) as tar:
            tar.extractall(target, filter="data")


class FileReader(_Local):
    def __init__(self, path):
        self.f = open(path, "rb")

    def remote_read(self, n):
        return self.f.read(n)

    def remote_close(self):
        self.f.close()


def main(reactor, builder_dir, name, args_json, *rest):
    args = json.loads(args_json)
    interrupt_after = float(rest[rest.index("--interrupt-after") + 1]) if "--interrupt-after" in rest else None
    if isinstance(args.get("writer"), str):
        args["writer"] = FileWriter(args["writer"])
    if isinstance(args.get("reader"), str):
        args["reader"] = FileReader(args["reader"])
    out = sys.stdout

    def send(pairs):
        for key, value in iter_updates(pairs):
            out.write(json.dumps({"update": [key, value]}) + "\n")
        out.flush()
        return defer.succeed(0)

    batcher = UpdateBatcher(send, reactor)
    args = dialect.args_from_master(name, args)
    try:
        cmd = registry.lookup(name)(reactor=reactor, builder_dir=builder_dir, command_id="0",
                                    args=args, updates=batcher)
    except Exception as e:
        out.write(json.dumps({"refused": f"{type(e).__name__}: {e}"}) + "\n")
        return defer.succeed(None)
    if interrupt_after is not None:
        reactor.callLater(interrupt_after, cmd.interrupt, "test interrupt")

    @defer.inlineCallbacks
    def run():
        failure = None
        try:
            yield cmd.start()
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
        yield batcher.flush()
        out.write(json.dumps({"complete": failure}) + "\n")
        out.flush()

    return run()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
