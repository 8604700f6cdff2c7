"""The file-system commands a master runs on a slave: mkdir rmdir cpdir stat glob listdir rmfile.

Arguments come as a Buildbot master sends them on the wire (`dir`, `fromdir`/`todir`, `file`,
`path`, docs/protocol.md §5.4 "Wire args from master") or under buildbot-worker's internal names
(`paths`, `from_path`, `to_path`, `path`). Relative paths resolve under the builder dir.

Updates follow buildbot-worker 4.3 (commands/fs.py): `rc` is 0 or the failing call's errno with a
header "<command>: <strerror>: <path>"; stat sends `stat`, glob and listdir send `files`; rmdir
and cpdir run `rm -rf` / `cp -R -P -p -v` as child processes and pass their output on. Every
command ends with `elapsed`, as buildbot-worker's `Command.doStart` does, except after an
interrupt (docs/protocol.md §5.3, §6).
"""

from __future__ import annotations

import codecs
import errno
import glob
import os
import shlex
import shutil

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from bbx.pb.updates import BANANA_SIZE_LIMIT

from .base import Command

log = Logger()

# Master default for rmdir/cpdir `timeout` (seconds without output), docs/protocol.md §5.4.
DEFAULT_CHILD_TIMEOUT = 120

# Banana refuses a list with more than 640 Ki elements (docs/protocol.md §1.1, §6), and jelly spends
# one element on the "list" tag; a few more are kept back as margin.
MAX_FILES = BANANA_SIZE_LIMIT - 16


def _text_arg(args: dict, name: str) -> str:
    value = args[name]
    if not isinstance(value, str):
        raise ValueError(f"argument {name!r} must be a string, not {type(value).__name__}")
    return value


def _first(args: dict, command: str, *names: str) -> str:
    """The first of `names` present in args (wire name first, worker-internal name next)."""
    for name in names:
        if name in args:
            return name
    raise ValueError(f"{command}: missing required argument: {' or '.join(names)}")


class FsCommand(Command):
    """Shared ending for commands that report `rc` then `elapsed` (buildbot's doStart order)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.started_at = self.reactor.seconds()

    def error_status(self, e: OSError, path: str) -> int:
        """Report an OSError the way buildbot-worker does; return the rc (the errno)."""
        log.info("{command} {path} failed: {e}", command=self.name, path=path, e=e)
        self.updates.add("header", f"{self.name}: {e.strerror}: {path}")
        return e.errno if e.errno is not None else 1

    def finish(self, rc: int) -> int:
        self.updates.add("rc", rc)
        if not self.interrupted:
            self.updates.add("elapsed", self.reactor.seconds() - self.started_at)
        return rc

    def start(self) -> defer.Deferred:
        """Run the synchronous body on the reactor thread, as buildbot-worker does."""
        self.started_at = self.reactor.seconds()
        try:
            rc = self.run()
        except Exception:
            return defer.fail()
        return defer.succeed(self.finish(rc))

    def run(self) -> int:
        raise NotImplementedError


class MakeDirectory(FsCommand):
    """`mkdir`: master sends `dir` (str or list) or `paths`; gets `rc` 0 or errno + header."""

    name = "mkdir"

    def setup(self, args: dict) -> None:
        self.paths = _paths(args, self.name, self.resolve)

    def run(self) -> int:
        for path in self.paths:
            try:
                if not os.path.isdir(path):
                    os.makedirs(path)
            except OSError as e:
                return self.error_status(e, path)
        return 0


def _paths(args: dict, command: str, resolve) -> list[str]:
    key = _first(args, command, "dir", "paths")
    value = args[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{command}: argument {key!r} must be a path or a non-empty list of paths")
    return [resolve(p) for p in value]


class _Child(protocol.ProcessProtocol):
    """Forwards one child's stdout/stderr to the command's updates; fires `ended` with its rc."""

    def __init__(self, command: "ChildCommand") -> None:
        self.command = command
        self.ended: defer.Deferred = defer.Deferred()
        # Incremental decoders so a multi-byte character split across reads stays whole.
        self.decoders = {
            key: codecs.getincrementaldecoder("utf-8")("replace") for key in ("stdout", "stderr")
        }

    def connectionMade(self) -> None:
        register = getattr(self.command.updates, "register_producer", None)
        if register is not None:
            # A huge `cp -v` listing must not outrun the master (UpdateBatcher flow control).
            register(self.transport)

    def _output(self, key: str, data: bytes, final: bool = False) -> None:
        text = self.decoders[key].decode(data, final)
        if text:
            self.command.updates.add(key, text)
        self.command.output_seen()

    def outReceived(self, data: bytes) -> None:
        self._output("stdout", data)

    def errReceived(self, data: bytes) -> None:
        self._output("stderr", data)

    def processEnded(self, reason) -> None:
        for key in self.decoders:
            self._output(key, b"", final=True)
        code = getattr(reason.value, "exitCode", None)
        # A child killed by a signal reports -1, as Buildbot's RunProcess does (docs/protocol.md §5.4).
        self.ended.callback(code if code is not None else -1)


class ChildCommand(FsCommand):
    """A command that runs helper programs (rm, chmod, cp) with buildbot's timeout / maxTime."""

    def setup(self, args: dict) -> None:
        self.timeout = args.get("timeout", DEFAULT_CHILD_TIMEOUT)
        self.max_time = args.get("maxTime")
        self.process = None
        self._idle_timer = None
        self._max_timer = None
        self.setup_paths(args)

    def setup_paths(self, args: dict) -> None:
        raise NotImplementedError

    @defer.inlineCallbacks
    def spawn(self, argv: list[str]):
        """Run argv to its end; fire with its exit code (-1 if killed)."""
        program = shutil.which(argv[0])
        if program is None:
            self.updates.add("header", f"{self.name}: cannot find program {argv[0]!r} in PATH\n")
            return errno.ENOENT
        cwd = self.builder_dir if os.path.isdir(self.builder_dir) else None
        timeouts = f" (timeout {self.timeout} secs)" if self.timeout else ""
        self.updates.add("header", f"{shlex.join(argv)}\n in dir {cwd or os.getcwd()}{timeouts}\n")
        child = _Child(self)
        self.process = self.reactor.spawnProcess(
            child, program, argv, env=dict(os.environ), path=cwd
        )
        self.output_seen()
        if self.max_time:
            self._max_timer = self.reactor.callLater(self.max_time, self._timed_out, "timeout")
        try:
            rc = yield child.ended
        finally:
            for timer in (self._idle_timer, self._max_timer):
                if timer is not None and timer.active():
                    timer.cancel()
            self._idle_timer = self._max_timer = None
            self.process = None
        return rc

    def output_seen(self) -> None:
        """Restart the no-output timer (buildbot's `timeout` counts silence, docs/protocol.md §6)."""
        if not self.timeout or self.process is None:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.timeout)
        else:
            self._idle_timer = self.reactor.callLater(
                self.timeout, self._timed_out, "timeout_without_output"
            )

    def _timed_out(self, reason: str) -> None:
        limit = self.timeout if reason == "timeout_without_output" else self.max_time
        what = "without output" if reason == "timeout_without_output" else "elapsed"
        self.updates.add("failure_reason", reason)
        self.updates.add("header", f"command timed out: {limit} seconds {what}, attempting to kill\n")
        self._kill()

    def _kill(self) -> None:
        if self.process is not None:
            try:
                self.process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    def interrupt(self, why: str) -> None:
        """Kill the running helper; start() then reports rc -1 and stops."""
        if self.interrupted:
            return
        super().interrupt(why)
        self.updates.add("header", f"\ncommand interrupted: {why}\n")
        self._kill()

    def start(self) -> defer.Deferred:
        self.started_at = self.reactor.seconds()
        d = defer.ensureDeferred(self.run_children())
        d.addCallback(self.finish)
        return d

    async def run_children(self) -> int:
        raise NotImplementedError


class RemoveDirectory(ChildCommand):
    """`rmdir`: master sends `dir` (str or list) or `paths`, `timeout`, `maxTime`; gets the
    helpers' stdout/stderr and `rc` (0, or the last failing `rm`'s exit code)."""

    name = "rmdir"

    def setup_paths(self, args: dict) -> None:
        self.paths = _paths(args, self.name, self.resolve)

    async def run_children(self) -> int:
        rc = 0
        for path in self.paths:
            if self.interrupted:
                return -1
            # `rm -rf` is buildbot's way; a leftover chmod-000 directory makes it fail, so
            # like buildbot we grant ourselves u+rwx on the whole tree and try once more.
            result = await self.spawn(["rm", "-rf", path])
            if result != 0 and not self.interrupted:
                await self.spawn(["chmod", "-Rf", "u+rwx", path])
                result = await self.spawn(["rm", "-rf", path])
            if result != 0:
                rc = result
        return -1 if self.interrupted else rc


class CopyDirectory(ChildCommand):
    """`cpdir`: master sends `fromdir`/`todir` (or `from_path`/`to_path`), `timeout`, `maxTime`;
    gets `cp -v`'s output and `rc` (cp's exit code)."""

    name = "cpdir"

    def setup_paths(self, args: dict) -> None:
        self.from_path = self.resolve(_text_arg(args, _first(args, self.name, "fromdir", "from_path")))
        self.to_path = self.resolve(_text_arg(args, _first(args, self.name, "todir", "to_path")))

    async def run_children(self) -> int:
        parent = os.path.dirname(self.to_path)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            return self.error_status(e, parent)
        # -P keeps symlinks as symlinks, -p keeps modes and times (buildbot-worker's flags).
        rc = await self.spawn(["cp", "-R", "-P", "-p", "-v", self.from_path, self.to_path])
        return -1 if self.interrupted else rc


class StatFile(FsCommand):
    """`stat`: master sends `file` (+ optional `workdir`) or `path`; gets `stat`, a list of the
    10 ints of `tuple(os.stat())`, and `rc` 0 — or errno + header."""

    name = "stat"

    def setup(self, args: dict) -> None:
        if "file" in args:
            self.path = self.resolve(
                os.path.join(args.get("workdir") or "", _text_arg(args, "file"))
            )
        else:
            self.path = self.resolve(_text_arg(args, _first(args, self.name, "file", "path")))

    def run(self) -> int:
        try:
            st = os.stat(self.path)
        except OSError as e:
            return self.error_status(e, self.path)
        self.updates.add("stat", [int(v) for v in tuple(st)])
        return 0


def _send_files(command: FsCommand, files: list[str], path: str) -> int:
    """One `files` update: Buildbot masters read updates['files'][0] (buildstep.runGlob, git)
    or [-1] (steps/worker.py), so a list split over several updates would be read wrongly.
    A list Banana cannot carry is refused with E2BIG instead of being silently cut."""
    if len(files) > MAX_FILES:
        command.updates.add(
            "header", f"{command.name}: too many entries ({len(files)} > {MAX_FILES}): {path}"
        )
        return errno.E2BIG
    command.updates.add("files", files)
    return 0


class GlobPath(FsCommand):
    """`glob`: master sends `path` (a pattern, `**` recursive); gets `files`, the sorted
    absolute matches, and `rc` 0."""

    name = "glob"

    def setup(self, args: dict) -> None:
        self.pattern = self.resolve(_text_arg(args, _first(args, self.name, "path")))

    def run(self) -> int:
        try:
            files = sorted(glob.glob(self.pattern, recursive=True))
        except OSError as e:
            return self.error_status(e, self.pattern)
        return _send_files(self, files, self.pattern)


class ListDir(FsCommand):
    """`listdir`: master sends `dir` (or `path`); gets `files`, the sorted entry names, and
    `rc` 0 — or errno + header."""

    name = "listdir"

    def setup(self, args: dict) -> None:
        self.path = self.resolve(_text_arg(args, _first(args, self.name, "dir", "path")))

    def run(self) -> int:
        try:
            files = sorted(os.listdir(self.path))
        except OSError as e:
            return self.error_status(e, self.path)
        return _send_files(self, files, self.path)


class RemoveFile(FsCommand):
    """`rmfile`: master sends `path` (`~` expanded); gets `rc` 0 — or errno + header."""

    name = "rmfile"

    def setup(self, args: dict) -> None:
        self.path = self.resolve(_text_arg(args, _first(args, self.name, "path")))

    def run(self) -> int:
        try:
            os.remove(self.path)
        except OSError as e:
            return self.error_status(e, self.path)
        return 0


COMMANDS = (
    MakeDirectory,
    RemoveDirectory,
    CopyDirectory,
    StatFile,
    GlobPath,
    ListDir,
    RemoveFile,
)
