"""Run one slave command outside any connection and print what it reports, as JSON lines.

    python tests/drive_command.py BUILDER_DIR NAME ARGS_JSON [--interrupt-after S]
                                  [--interrupt-on-output TEXT] [--contain cgroup|subreaper]
                                  [--secret-glob GLOB]

Each update pair the command sends is printed as {"update": [key, value]}; the end as
{"complete": null} or {"complete": "<failure text>"}. Transfer commands get local stand-ins
for the master's writer/reader: a writer named in ARGS_JSON as {"writer": "<path>"} appends
to that file (and "unpack" extracts a tar there), a reader {"reader": "<path>"} reads it.
With --contain the command runs under a Containment (bbx/slave/containment.py) as in a slave,
without a guard: in a cgroup, or with this process as the subreaper; it is stopped (what the
command left is killed) before {"complete": ...} is printed. Used by the command tests: real
processes and files, only the PB hop left out.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile

from twisted.internet import defer, task

from bbx.pb import dialect
from bbx.pb.secrets import SecretNames
from bbx.pb.updates import UpdateBatcher, iter_updates
from bbx.slave.commands import registry
from bbx.slave.commands.base import CommandContext



class _BlockingLines:
    """The driver's stdout, written whole: a pipe to the test holds 64 KiB, and should its open
    file description ever be non-blocking (flags are shared with every process that inherited
    it), a buffered write of a 10 MB line would stop at 64 KiB and lose the rest of the line."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        os.set_blocking(self.fd, True)
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self) -> None:
        pass

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
        if self.buf.closed:  # the real master applies utime to the renamed destination
            os.utime(self.path, self._utime)

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
        self.calls = []

    def remote_read(self, n):
        self.calls.append(("read", n))
        return self.f.read(n)

    def remote_close(self):
        self.calls.append(("close",))
        self.f.close()


def main(reactor, builder_dir, name, args_json, *rest):
    args = json.loads(args_json)
    interrupt_after = float(rest[rest.index("--interrupt-after") + 1]) if "--interrupt-after" in rest else None
    # Interrupt once TEXT shows up in stdout: lets a test interrupt a child exactly when it is ready.
    interrupt_on = rest[rest.index("--interrupt-on-output") + 1] if "--interrupt-on-output" in rest else None
    holder = {}
    containment = None
    # As a slave starts: commands spawn fork-free where the tools exist (BBX_SPAWN=fork: fork).
    from bbx.slave.spawn import choose_spawner

    choose_spawner()
    if "--contain" in rest:
        from bbx.slave.containment import Containment

        mode = rest[rest.index("--contain") + 1]
        containment = Containment(reactor, key=f"driver-{os.getpid()}", cgroups=mode == "cgroup",
                                  guard=False)
        containment.start()
        out_mode = containment.mode
    globs = tuple(rest[i + 1] for i, a in enumerate(rest) if a == "--secret-glob")
    context = CommandContext(secret_names=SecretNames(globs), containment=containment)
    if isinstance(args.get("writer"), str):
        args["writer"] = FileWriter(args["writer"])
    if isinstance(args.get("reader"), str):
        args["reader"] = FileReader(args["reader"])
    sys.stdout.flush()
    out = _BlockingLines(sys.stdout.fileno())
    if containment is not None:
        out.write(json.dumps({"containment": out_mode}) + "\n")

    def send(pairs):
        for key, value in iter_updates(pairs):
            out.write(json.dumps({"update": [key, value]}) + "\n")
            if interrupt_on is not None and key == "stdout" and interrupt_on in value and "cmd" in holder:
                reactor.callLater(0, holder.pop("cmd").interrupt, "test interrupt")
        out.flush()
        return defer.succeed(0)

    batcher = UpdateBatcher(send, reactor)
    args = dialect.args_from_master(name, args)
    try:
        cmd = registry.lookup(name)(reactor=reactor, builder_dir=builder_dir, command_id="0",
                                    args=args, updates=batcher, context=context)
    except Exception as e:
        out.write(json.dumps({"refused": f"{type(e).__name__}: {e}"}) + "\n")
        return defer.succeed(None)
    holder["cmd"] = cmd
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
        if containment is not None:
            yield containment.stop()
        spawned_by = getattr(getattr(cmd, "process", None), "spawned_by", None)
        if spawned_by is not None:
            out.write(json.dumps({"spawned_by": spawned_by}) + "\n")
        for peer in (args.get("writer"), args.get("reader")):
            if isinstance(peer, _Local):
                out.write(json.dumps({"peer_calls": getattr(peer, "calls", [])}) + "\n")
        out.write(json.dumps({"complete": failure}) + "\n")
        out.flush()

    return run()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
