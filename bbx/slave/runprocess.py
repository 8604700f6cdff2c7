"""Run one child process for a slave command: stream its output, enforce its limits, kill its tree.

`RunProcess` is what a Buildbot worker's `runprocess.RunProcess` is (PROTOCOL.md §5.4, §6): it
sends the worker's headers, streams stdout/stderr/logfiles as `stdout`/`stderr`/`log` updates,
enforces `timeout`/`maxTime`/`max_lines`, and reports `rc`, `elapsedTime` and `elapsed`.

Where it goes further than the worker:

- The child leads its own *session* (not just a process group), and every run gets a unique
  cookie in its environment. Killing signals the session, the process group, every descendant
  found through /proc parent links, every process carrying the cookie (daemons that double-forked
  and called setsid keep their environment) and every process holding our output pipes. The
  processes are frozen with SIGSTOP first, so none can fork a survivor while we collect them.
- A daemon that outlives the child while holding its output open does not hang the command:
  LEFTOVER_GRACE after the child exits, whatever is left of its tree is killed.
- The child dies with the slave (PR_SET_PDEATHSIG on Linux), even when the slave is SIGKILLed.
- Output flows back under flow control: the batcher pauses reading the child's pipes while the
  master is behind (bbx/pb/updates.py), and the silence timeout does not count paused time.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import shutil
import signal
import uuid
from typing import Any, Mapping

from twisted.internet import defer, protocol
from twisted.logger import Logger

from bbx.pb.secrets import is_secret_name
from bbx.slave.logfiles import LogfileWatcher
from bbx.slave.proctree import ProcessTree
from bbx.slave.spawn import NOT_FOUND_RC, SessionProcess, SessionPTYProcess

log = Logger()

# PROTOCOL.md §6: how long a killed process may take to die before the worker gives up,
# reports "SIG<X> failed to kill process" with a fake rc -1 and fails the command.
BACKUP_TIMEOUT = 5.0

# After the child exits, how long its leftovers may keep its output open (a background job
# printing its last line) before we decide they are daemons and kill them. Our choice: the
# worker waits for ever (until the command's timeout), which hangs builds.
LEFTOVER_GRACE = 1.0

# The rc the worker reports for a process it killed (PROTOCOL.md §5.4 update order, item 4).
KILLED_RC = -1

# What the environment header shows instead of a secret-looking value (bbx/pb/secrets.py).
MASK = "***"

# Set in the child's environment (not shown in headers) so its descendants can be found
# even after they left its session and were re-parented (ProcessTree).
COOKIE_VAR = "BBX_RUN_COOKIE"

_ENV_REFERENCE = re.compile(r"\$\{([0-9a-zA-Z_]*)\}")


class CommandCouldNotRun(RuntimeError):
    """The child could not be started at all (workdir, fork); start() errbacks with this."""


class KillFailed(RuntimeError):
    """The child outlived BACKUP_TIMEOUT after its last signal; start() errbacks with this."""


# ---------------------------------------------------------------------------------------------
# Arguments as the master sends them


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def _is_obfuscated(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 3 and item[0] == "obfuscated"


def command_argv(command: list | tuple | str | bytes) -> tuple[list[str], list[str] | str, str]:
    """(argv to exec, what to show as argv, display line) for a master's `command`.

    A string runs via `/bin/sh -c`; a list is exec'd, its `('obfuscated', real, fake)` items
    run `real` and show `fake` (PROTOCOL.md §5.4).
    """
    if isinstance(command, (str, bytes)):
        text = _text(command)
        return ["/bin/sh", "-c", text], text, text
    if not isinstance(command, (list, tuple)) or not command:
        raise ValueError(f"shell: 'command' must be a string or a non-empty list, not {command!r}")
    real = [_text(c[1]) if _is_obfuscated(c) else _text(c) for c in command]
    fake = [_text(c[2]) if _is_obfuscated(c) else _text(c) for c in command]
    display = " ".join(shlex.quote(a) if a else '""' for a in fake)
    return real, fake, display


def build_environment(requested: Mapping[str, Any] | None, base: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: `base` (the slave's) changed as the master asks (PROTOCOL.md §5.4).

    List values are joined with os.pathsep, None deletes, `${VAR}` expands from `base`, and
    PYTHONPATH keeps the slave's own PYTHONPATH after the requested one. Unlike the worker we
    do not append an empty entry when the slave has no PYTHONPATH: a trailing ':' would put
    the current directory on the child's Python path.
    """
    env = dict(base)
    if not requested:
        return env
    if not isinstance(requested, Mapping):
        raise ValueError(f"shell: 'env' must be a dictionary, not {type(requested).__name__}")
    wanted: dict[str, Any] = {}
    for key, value in requested.items():
        key = _text(key)
        if isinstance(value, (list, tuple)):
            value = os.pathsep.join(_text(v) for v in value)
        elif isinstance(value, bytes):
            value = _text(value)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"shell: env value for {key!r} must be a string or a list, not {value!r}")
        wanted[key] = value
    if wanted.get("PYTHONPATH") is not None and base.get("PYTHONPATH"):
        wanted["PYTHONPATH"] += os.pathsep + "${PYTHONPATH}"

    def expand(match: re.Match) -> str:
        return base.get(match.group(1), "")

    for key, value in wanted.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _ENV_REFERENCE.sub(expand, value)
    return env


def environment_header(env: Mapping[str, str]) -> str:
    """The worker's " environment:" header, secret-looking values masked."""
    lines = [" environment:\n"]
    for name in sorted(env):
        lines.append(f"  {name}={MASK if is_secret_name(name) else env[name]}\n")
    return "".join(lines)


def signal_number(name: Any) -> int:
    """'KILL', 'SIGKILL', 9 -> 9; ValueError for anything that is not a signal."""
    if isinstance(name, int) and not isinstance(name, bool):
        return signal.Signals(name).value
    text = _text(name).upper()
    try:
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text].value
    except KeyError:
        raise ValueError(f"shell: unknown signal {name!r} (use a name such as 'KILL' or 'TERM')") from None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _seconds_text(value: float) -> str:
    return f"{value} {'sec' if value == 1 else 'secs'}"


class _ChildProtocol(protocol.ProcessProtocol):
    """Forwards the child's events to its RunProcess."""

    def __init__(self, run: "RunProcess") -> None:
        self.run = run

    def connectionMade(self) -> None:
        self.run._connected(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.run._output(childFD, data)

    def processExited(self, reason) -> None:
        self.run._on_exit(reason)

    def processEnded(self, reason) -> None:
        self.run._on_end(reason)


def _logfile_specs(logfiles: Any) -> list[tuple[str, str, bool]]:
    if not logfiles:
        return []
    if not isinstance(logfiles, Mapping):
        raise ValueError("shell: 'logfiles' must map a log name to a filename or {filename, follow}")
    specs = []
    for name, value in logfiles.items():
        follow = False
        if isinstance(value, Mapping):
            if "filename" not in value:
                raise ValueError(f"shell: logfile {name!r} has no 'filename'")
            follow = bool(value.get("follow", False))
            value = value["filename"]
        specs.append((_text(name), _text(value), follow))
    return specs


# ---------------------------------------------------------------------------------------------
# The runner


class RunProcess:
    """Runs one child for a slave command and reports it through `updates` (an UpdateBatcher).

    `start()` returns a Deferred firing with the rc (-1 if the child was killed) once `rc`,
    the `elapsedTime` header and `elapsed` have been added; it errbacks with CommandCouldNotRun
    when the child could not be started and with KillFailed when it would not die.
    `kill(why)` interrupts: SIGTERM to the whole tree, `sigterm_time` later `interrupt_signal`
    (at once when sigterm_time is None); no `elapsed` is sent afterwards (PROTOCOL.md §6).
    """

    def __init__(
        self,
        reactor,
        command: list[str] | str,
        *,
        workdir: str,
        env: dict | None,
        updates,
        want_stdout: bool = True,
        want_stderr: bool = True,
        timeout: float | None = None,
        max_time: float | None = None,
        max_lines: int | None = None,
        sigterm_time: float | None = None,
        interrupt_signal: Any = "KILL",
        initial_stdin: str | bytes | None = None,
        use_pty: bool = False,
        logfiles: Mapping | None = None,
        log_environ: bool = True,
        send_rc: bool = True,
    ) -> None:
        self.reactor = reactor
        self.argv, self.shown_argv, self.display = command_argv(command)
        self.workdir = os.path.abspath(workdir)
        self.env = build_environment(env, os.environ)
        self.env["PWD"] = self.workdir  # the shell would otherwise inherit the slave's
        self.updates = updates
        self.want_stdout = bool(want_stdout)
        self.want_stderr = bool(want_stderr)
        self.timeout = _positive("timeout", timeout)
        self.max_time = _positive("maxTime", max_time)
        self.max_lines = None if max_lines is None else int(max_lines)
        self.sigterm_time = None if sigterm_time is None else float(sigterm_time)
        self.interrupt_signal = signal_number(interrupt_signal or "KILL")
        if isinstance(initial_stdin, str):
            initial_stdin = initial_stdin.encode("utf-8")
        self.initial_stdin = initial_stdin
        if not isinstance(use_pty, bool):
            raise ValueError(f"shell: 'usePTY' must be true or false, not {use_pty!r}")
        self.use_pty = use_pty
        self.logfiles = dict(logfiles or {})
        self.logfile_specs = _logfile_specs(self.logfiles)
        self.log_environ = log_environ
        self.send_rc = send_rc

        self.cookie = uuid.uuid4().hex
        self.pid: int | None = None
        self.tree: ProcessTree | None = None
        self._transport = None
        self._deferred: defer.Deferred | None = None
        self._start_time = 0.0
        self._decode_out = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._decode_err = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._watchers: list[LogfileWatcher] = []
        self._lines = 0
        self._stdout_closed = False
        self._last_activity = 0.0
        self._paused = False
        self._exited = False
        self._ended = False
        self._killed = False  # we signalled it: the rc is -1 whatever it exits with
        self._interrupted = False  # kill() from outside: no `elapsed` (PROTOCOL.md §6)
        self._timers: dict[str, Any] = {}

    # -- starting ------------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Send the headers, spawn the child; the Deferred fires with its rc (see class doc)."""
        self._deferred = d = defer.Deferred()
        add = self.updates.add
        if self.use_pty and self.initial_stdin is not None:
            add("header", "WARNING: disabling usePTY for this command\n")
            self.use_pty = False
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            return self._could_not_run(f"cannot create workdir {self.workdir}: {e.strerror or e}")
        if not os.path.isdir(self.workdir):
            return self._could_not_run(f"cannot use workdir {self.workdir}: not a directory")

        add("header", self.display + "\n")
        where = f" in dir {self.workdir}"
        if self.timeout:
            where += f" (timeout {_seconds_text(self.timeout)})"
        if self.max_time:
            where += f" (maxTime {_seconds_text(self.max_time)})"
        add("header", where + "\n")
        add("header", f" watching logfiles {self.logfiles}\n")
        add("header", f" argv: {self.shown_argv}\n")
        if self.log_environ:
            add("header", environment_header(self.env))
        if self.initial_stdin:
            add("header", f" writing {len(self.initial_stdin)} bytes to stdin\n")
        add("header", f" using PTY: {self.use_pty}\n")

        self._start_time = self._last_activity = self.reactor.seconds()
        missing = self._missing_executable()
        if missing:
            add("header", missing)
            self._finish(None, NOT_FOUND_RC)
            return d

        # Taken before the child runs, so a file it writes at once still counts as changed.
        self._watchers = [LogfileWatcher(name, os.path.join(self.workdir, filename), follow, self._log_text)
                          for name, filename, follow in self.logfile_specs]
        child_env = dict(self.env)
        child_env[COOKIE_VAR] = self.cookie
        proto = _ChildProtocol(self)
        try:
            if self.use_pty:
                SessionPTYProcess(self.reactor, self.argv[0], self.argv, child_env, self.workdir,
                                   proto, None, None, True)
            else:
                SessionProcess(self.reactor, self.argv[0], self.argv, child_env, self.workdir, proto)
        except OSError as e:
            return self._could_not_run(f"cannot start {self.argv[0]}: {e.strerror or e}")

        if self.timeout:
            self._timers["silence"] = self.reactor.callLater(self.timeout, self._check_silence)
        if self.max_time:
            self._timers["max_time"] = self.reactor.callLater(self.max_time, self._max_time_reached)
        for watcher in self._watchers:
            watcher.start(self.reactor)
        return d

    def _missing_executable(self) -> str | None:
        """A header if argv[0] cannot be found, so we answer like a shell without forking."""
        exe = self.argv[0]
        if os.sep in exe:
            found = os.path.exists(os.path.join(self.workdir, exe))
        else:
            found = shutil.which(exe, path=self.env.get("PATH", os.defpath)) is not None
        if found:
            return None
        return f"{exe}: command not found (exec failed: No such file or directory)\n"

    def _could_not_run(self, message: str) -> defer.Deferred:
        self.updates.add("header", message + "\n")
        d, self._deferred = self._deferred, None
        d.errback(CommandCouldNotRun(message))
        return d

    def _connected(self, transport) -> None:
        self._transport = transport
        self.pid = transport.pid
        inodes = []
        for pipe in getattr(transport, "pipes", {}).values():
            try:
                inodes.append(os.fstat(pipe.fileno()).st_ino)
            except OSError:
                pass
        self.tree = ProcessTree(self.pid, cookie=f"{COOKIE_VAR}={self.cookie}", pipe_inodes=inodes)
        log.debug("spawned pid {pid}: {argv}", pid=self.pid, argv=self.shown_argv)
        register = getattr(self.updates, "register_producer", None)
        if register is not None:
            register(self)
        if self.initial_stdin:
            transport.write(self.initial_stdin)
        if not self.use_pty:  # a PTY is one fd both ways: closing its stdin closes the whole PTY
            transport.closeStdin()

    # -- flow control (IPushProducer for the batcher) ------------------------------------------

    def pauseProducing(self) -> None:
        """The master is behind: stop reading the child's output (it blocks on a full pipe)."""
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._last_activity = self.reactor.seconds()
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self.kill("command output no longer wanted")

    # -- output --------------------------------------------------------------------------------

    def _output(self, fd: int, data: bytes) -> None:
        # The hot path: one call per pipe read (up to PIPE_READ_SIZE). No per-line work.
        self._last_activity = self.reactor.seconds()
        if fd == 1:
            if not self.want_stdout or self._stdout_closed:
                return
            text = self._decode_out(data)
            if text:
                self.updates.add("stdout", text)
        else:
            if not self.want_stderr:
                return
            text = self._decode_err(data)
            if text:
                self.updates.add("stderr", text)
        if self.max_lines is not None and not self._killed:
            self._lines += data.count(b"\n")
            if self._lines > self.max_lines:
                self._max_lines_reached()

    def _log_text(self, name: str, text: str) -> None:
        self._last_activity = self.reactor.seconds()
        self.updates.add("log", (name, text))

    def _flush_decoders(self) -> None:
        tail = self._decode_out(b"", True)
        if tail and self.want_stdout and not self._stdout_closed:
            self.updates.add("stdout", tail)
        tail = self._decode_err(b"", True)
        if tail and self.want_stderr:
            self.updates.add("stderr", tail)

    # -- limits --------------------------------------------------------------------------------

    def _check_silence(self) -> None:
        self._timers.pop("silence", None)
        now = self.reactor.seconds()
        if self._paused:
            self._last_activity = now  # waiting for the master is not the child's silence
        idle = now - self._last_activity
        if idle < self.timeout:
            self._timers["silence"] = self.reactor.callLater(self.timeout - idle, self._check_silence)
            return
        self.updates.add("failure_reason", "timeout_without_output")
        self._kill(f"command timed out: {self.timeout} seconds without output running {self.display}")

    def _max_time_reached(self) -> None:
        self._timers.pop("max_time", None)
        self.updates.add("failure_reason", "timeout")
        self._kill(f"command timed out: {self.max_time} seconds elapsed running {self.display}")

    def _max_lines_reached(self) -> None:
        # As the worker: stop taking stdout at once (the child gets EPIPE), then kill.
        self._stdout_closed = True
        if self._transport is not None:
            self._transport.closeStdout()
        self.updates.add("failure_reason", "max_lines_failure")
        self._kill(f"command exceeds max lines: {self._lines}/{self.max_lines} "
                   f"written/allowed running {self.display}")

    # -- killing -------------------------------------------------------------------------------

    def kill(self, why: str) -> None:
        """Interrupt: kill the child and everything it started; no `elapsed` will be sent."""
        if self._deferred is None or self._ended:
            return
        self._interrupted = True
        self._kill(why)

    def _kill(self, why: str) -> None:
        if self._killed or self._ended:
            return
        self._killed = True
        for name in ("silence", "max_time"):
            self._cancel(name)
        self.updates.add("header", f"\n{why}, attempting to kill\n")
        if self.sigterm_time is not None:
            self._signal_tree(signal.SIGTERM)
            self._timers["sigterm"] = self.reactor.callLater(self.sigterm_time, self._final_signal)
        else:
            self._final_signal()

    def _final_signal(self) -> None:
        self._timers.pop("sigterm", None)
        if self._ended:
            return
        if not self._exited or self.tree is None or self.tree.members(include_root=False):
            self._signal_tree(self.interrupt_signal)
        self._timers["backup"] = self.reactor.callLater(BACKUP_TIMEOUT, self._backup_timeout)
        if self._exited and "leftovers" not in self._timers:
            self._timers["leftovers"] = self.reactor.callLater(LEFTOVER_GRACE, self._leftovers)

    def _signal_tree(self, sig: int) -> None:
        if self.tree is None:
            return
        hit = self.tree.signal(sig, include_root=not self._exited)
        log.debug("sent {sig} to {n} process(es) of pid {pid}", sig=signal_name(sig), n=hit, pid=self.pid)

    def _backup_timeout(self) -> None:
        self._timers.pop("backup", None)
        if self._ended or self._deferred is None:
            return
        name = signal_name(self.interrupt_signal)
        self.updates.add("header", f"{name} failed to kill process\n")
        if self.send_rc:
            self.updates.add("header", f"using fake rc={KILLED_RC}\n")
            self.updates.add("rc", KILLED_RC)
        self._stop_watchers()
        self._cancel_all()
        if self._transport is not None:
            self._transport.loseConnection()
        d, self._deferred = self._deferred, None
        d.errback(KillFailed(f"{name} failed to kill process"))

    # -- ending --------------------------------------------------------------------------------

    def _on_exit(self, reason) -> None:
        """The child itself is gone (reaped); its output pipes may still be held open."""
        self._exited = True
        if self._ended:
            return
        if self._killed:
            if "sigterm" in self._timers:
                return  # the rest of the tree has until sigterm_time to finish, as the child had
            self._signal_tree(self.interrupt_signal)  # the rest of the tree goes with it
        self._timers["leftovers"] = self.reactor.callLater(LEFTOVER_GRACE, self._leftovers)

    def _leftovers(self) -> None:
        self._timers.pop("leftovers", None)
        if self._ended:
            return
        if self._paused:
            # The pipes may just hold output the master has not taken yet.
            self._timers["leftovers"] = self.reactor.callLater(LEFTOVER_GRACE, self._leftovers)
            return
        members = self.tree.members(include_root=False) if self.tree is not None else set()
        if members:
            if not self._killed:
                pids = " ".join(str(p) for p in sorted(members))
                self.updates.add("header", f"\nthe command exited but left processes holding its output "
                                           f"open; killing them: {pids}\n")
            self._signal_tree(signal.SIGKILL)
            self._timers["leftovers"] = self.reactor.callLater(LEFTOVER_GRACE, self._leftovers)
        elif self._transport is not None:
            # Held by something we cannot see or signal: stop waiting for it.
            self._transport.loseConnection()

    def _on_end(self, reason) -> None:
        """The child is gone and its output pipes are closed: report rc."""
        self._ended = True
        value = reason.value
        self._finish(getattr(value, "signal", None), getattr(value, "exitCode", None))

    def _finish(self, sig: int | None, rc: int | None) -> None:
        self._cancel_all()
        self._flush_decoders()
        self._stop_watchers()
        if self._deferred is None:
            return  # already given up on it (backup timeout)
        if sig is not None or self._killed or rc is None:
            rc = KILLED_RC
        if self.send_rc:
            if sig is not None:
                self.updates.add("header", f"process killed by signal {sig}\n")
            self.updates.add("rc", rc)
        elapsed = self.reactor.seconds() - self._start_time
        self.updates.add("header", f"elapsedTime={elapsed:0.6f}\n")
        if not self._interrupted:
            self.updates.add("elapsed", elapsed)
        d, self._deferred = self._deferred, None
        d.callback(rc)

    def _stop_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_all(self) -> None:
        for name in list(self._timers):
            self._cancel(name)


def _positive(name: str, value: Any) -> float | None:
    """Buildbot treats 0 and None alike as 'no limit'."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"shell: {name!r} must be a number of seconds, not {value!r}") from None
    if number <= 0:
        return None
    return int(number) if number == int(number) else number
