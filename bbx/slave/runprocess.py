"""Run one child process for a slave command: stream its output, enforce its limits, kill its tree.

`RunProcess` is what a Buildbot worker's `runprocess.RunProcess` is (docs/protocol.md §5.4, §6): it
sends the worker's headers, streams stdout/stderr/logfiles as `stdout`/`stderr`/`log` updates,
enforces `timeout`/`maxTime`/`max_lines`, and reports `rc`, `elapsedTime` and `elapsed`.

Where it goes further than the worker:

- Nothing escapes. The child leads its own *session*, runs in its own cgroup where the slave
  can make one, and carries a unique cookie in its environment (bbx/slave/containment.py).
  Killing signals every process of the run: the cgroup, the session, the process group, every
  descendant found through /proc parent links, the orphans the slave adopted for it, every
  process carrying the cookie and every process holding our output pipes. They are frozen
  with SIGSTOP first, so none can fork a survivor while we collect them. The header then names
  what was killed beyond the child.
- A kill is a signal and a grace, in Buildbot's terms, plus a SIGKILL for a process that
  ignores the signal (bbx/slave/treekill.py).
- A daemon that outlives the child while holding its output open does not hang the command:
  LEFTOVER_GRACE after the child exits, whatever is left of its tree is killed.
- The child dies with the slave (PR_SET_PDEATHSIG on Linux), and the guard kills the rest.
- Secret values never leave the host: they are replaced in headers and output (redact.py).
- Output flows back under flow control: the batcher pauses reading the child's pipes while the
  master is behind (bbx/pb/updates.py), and the silence timeout does not count paused time.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from typing import Any, Mapping

from twisted.internet import defer, protocol
from twisted.logger import Logger

from bbx.pb.secrets import SecretNames
from bbx.slave.logfiles import LogfileWatcher
from bbx.slave.proctree import COOKIE_VAR, ProcessTree
from bbx.slave.redact import HOLD_DELAY, Secrets, TextStream
from bbx.slave.shellargs import (build_environment, command_argv, environment_header,
                                 logfile_specs, obfuscated_words, positive, seconds,
                                 seconds_text, signal_name, signal_number)
from bbx.slave.spawn import NOT_FOUND_RC, SessionProcess, SessionPTYProcess
from bbx.slave.treekill import BACKUP_TIMEOUT, TreeKill

log = Logger()

# After the child exits, how long its leftovers may keep its output open (a background job
# printing its last line) before we decide they are daemons and kill them. Our choice: the
# worker waits for ever (until the command's timeout), which hangs builds.
LEFTOVER_GRACE = 1.0

# The rc the worker reports for a process it killed (docs/protocol.md §5.4 update order, item 4).
KILLED_RC = -1

class CommandCouldNotRun(RuntimeError):
    """The child could not be started at all (workdir, fork); start() errbacks with this."""


class KillFailed(RuntimeError):
    """The child outlived BACKUP_TIMEOUT after its last signal; start() errbacks with this."""


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


class RunProcess:
    """Runs one child for a slave command and reports it through `updates` (an UpdateBatcher).

    `start()` returns a Deferred firing with the rc (-1 if the child was killed) once `rc`,
    the `elapsedTime` header and `elapsed` have been added; it errbacks with CommandCouldNotRun
    when the child could not be started and with KillFailed when it would not die.
    `kill(why)` interrupts (see the module docstring for the signals); no `elapsed` is sent
    afterwards (docs/protocol.md §6). `containment` (bbx/slave/containment.py) places the child;
    without one only its session, group, cookie and pipes find its tree. `secret_names` says
    which variables of the child's environment hold secrets to redact.
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
        sigkill_time: float | None = None,
        initial_stdin: str | bytes | None = None,
        use_pty: bool = False,
        logfiles: Mapping | None = None,
        log_environ: bool = True,
        send_rc: bool = True,
        containment=None,
        secret_names: SecretNames = SecretNames(),
    ) -> None:
        self.reactor = reactor
        self.argv, self.shown_argv, self.display = command_argv(command)
        self.workdir = os.path.abspath(workdir)
        self.env = build_environment(env, os.environ)
        self.env["PWD"] = self.workdir  # the shell would otherwise inherit the slave's
        self.updates = updates
        self.want_stdout = bool(want_stdout)
        self.want_stderr = bool(want_stderr)
        self.timeout = positive("timeout", timeout)
        self.max_time = positive("maxTime", max_time)
        self.max_lines = None if max_lines is None else int(max_lines)
        self.sigterm_time = seconds("sigtermTime", sigterm_time)
        self.interrupt_signal = signal_number(interrupt_signal or "KILL")
        self.sigkill_time = seconds("sigkillTime", sigkill_time)
        if isinstance(initial_stdin, str):
            initial_stdin = initial_stdin.encode("utf-8")
        self.initial_stdin = initial_stdin
        if not isinstance(use_pty, bool):
            raise ValueError(f"shell: 'usePTY' must be true or false, not {use_pty!r}")
        self.use_pty = use_pty
        self.logfiles = dict(logfiles or {})
        self.logfile_specs = logfile_specs(self.logfiles)
        self.log_environ = log_environ
        self.send_rc = send_rc
        self.containment = containment
        self.secret_names = secret_names
        self.secrets = Secrets.from_environment(self.env, secret_names, obfuscated_words(command))

        self.cookie = uuid.uuid4().hex
        self.pid: int | None = None
        self.spawned_by: str | None = None
        self.tree: ProcessTree | None = None
        self.run = None  # our place in the containment
        self._transport = None
        self._deferred: defer.Deferred | None = None
        self._start_time = 0.0
        self._out = TextStream(self.secrets)
        self._err = TextStream(self.secrets)
        self._watchers: list[LogfileWatcher] = []
        self._lines = 0
        self._stdout_closed = False
        self._last_activity = 0.0
        self._paused = False
        self._exited = False
        self._ended = False
        self._killed = False  # we signalled it: the rc is -1 whatever it exits with
        self._interrupted = False  # kill() from outside: no `elapsed` (docs/protocol.md §6)
        self._kill_plan = TreeKill(self.sigterm_time, self.interrupt_signal, self.sigkill_time)
        self._timers: dict[str, Any] = {}

    # -- starting ------------------------------------------------------------------------------

    def _header(self, text: str) -> None:
        self.updates.add("header", self.secrets.text(text) if self.secrets else text)

    def start(self) -> defer.Deferred:
        """Send the headers, spawn the child; the Deferred fires with its rc (see class doc)."""
        self._deferred = d = defer.Deferred()
        header = self._header
        if self.use_pty and self.initial_stdin is not None:
            header("WARNING: disabling usePTY for this command\n")
            self.use_pty = False
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            return self._could_not_run(f"cannot create workdir {self.workdir}: {e.strerror or e}")
        if not os.path.isdir(self.workdir):
            return self._could_not_run(f"cannot use workdir {self.workdir}: not a directory")

        header(self.display + "\n")
        where = f" in dir {self.workdir}"
        if self.timeout:
            where += f" (timeout {seconds_text(self.timeout)})"
        if self.max_time:
            where += f" (maxTime {seconds_text(self.max_time)})"
        header(where + "\n")
        header(f" watching logfiles {self.logfiles}\n")
        header(f" argv: {self.shown_argv}\n")
        if self.log_environ:
            header(environment_header(self.env, self.secret_names))
        if self.initial_stdin:
            header(f" writing {len(self.initial_stdin)} bytes to stdin\n")
        header(f" using PTY: {self.use_pty}\n")

        self._start_time = self._last_activity = self.reactor.seconds()
        missing = self._missing_executable()
        if missing:
            header(missing)
            self._finish(None, NOT_FOUND_RC)
            return d

        # Taken before the child runs, so a file it writes at once still counts as changed.
        self._watchers = [LogfileWatcher(name, os.path.join(self.workdir, filename), follow,
                                         self._log_text, secrets=self.secrets)
                          for name, filename, follow in self.logfile_specs]
        child_env = dict(self.env)
        child_env[COOKIE_VAR] = self.cookie
        proto = _ChildProtocol(self)
        if self.containment is not None:
            self.run = self.containment.open_run(self.cookie, self.workdir)
        cgroup_procs = self.run.cgroup.procs_file if self.run is not None and self.run.cgroup else None
        try:
            if self.use_pty:
                SessionPTYProcess(self.reactor, self.argv[0], self.argv, child_env, self.workdir,
                                  proto, None, None, True, cgroup_procs=cgroup_procs)
            else:
                SessionProcess(self.reactor, self.argv[0], self.argv, child_env, self.workdir, proto,
                               cgroup_procs=cgroup_procs)
        except OSError as e:
            self._close_run()
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
        self._header(message + "\n")
        d, self._deferred = self._deferred, None
        d.errback(CommandCouldNotRun(message))
        return d

    def _connected(self, transport) -> None:
        self._transport = transport
        self.pid = transport.pid
        self.spawned_by = getattr(transport, "spawned_by", "fork")  # clone3, posix_spawn, fork
        inodes = []
        for pipe in getattr(transport, "pipes", {}).values():
            try:
                inodes.append(os.fstat(pipe.fileno()).st_ino)
            except OSError:
                pass
        run, containment = self.run, self.containment
        self.tree = ProcessTree(
            self.pid, cookie=f"{COOKIE_VAR}={self.cookie}", pipe_inodes=inodes,
            cgroup=run.cgroup if run is not None else None,
            adopted=(lambda: containment.adopted_for(run)) if run is not None else None)
        if run is not None:
            containment.child_started(run, self.pid, self.tree)
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
            self._send("stdout", self._out.feed(data))
        else:
            if not self.want_stderr:
                return
            self._send("stderr", self._err.feed(data))
        if self.secrets and "release" not in self._timers and (self._out.pending or self._err.pending):
            self._timers["release"] = self.reactor.callLater(HOLD_DELAY, self._release_held)
        if self.max_lines is not None and not self._killed:
            self._lines += data.count(b"\n")
            if self._lines > self.max_lines:
                self._max_lines_reached()

    def _send(self, key: str, text: str) -> None:
        if text:
            self.updates.add(key, text)

    def _release_held(self) -> None:
        """Output paused on what may be the start of a secret: send it as it is."""
        self._timers.pop("release", None)
        if self.want_stdout and not self._stdout_closed:
            self._send("stdout", self._out.release())
        if self.want_stderr:
            self._send("stderr", self._err.release())

    def _log_text(self, name: str, text: str) -> None:
        self._last_activity = self.reactor.seconds()
        self.updates.add("log", (name, text))

    def _flush_decoders(self) -> None:
        if self.want_stdout and not self._stdout_closed:
            self._send("stdout", self._out.close())
        if self.want_stderr:
            self._send("stderr", self._err.close())

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
        """Interrupt: kill the child and everything it started; no `elapsed` will be sent.

        Asked again while the tree still has its grace (an operator's second Ctrl-C), the
        rest of the grace is skipped: SIGKILL at once."""
        if self._deferred is None or self._ended:
            return
        self._interrupted = True
        if self._killed and self._kill_plan.pending and "stage" in self._timers:
            self._cancel("stage")
            self._kill_plan.hurry()
            self._header(f"{why} again: not waiting for the rest of the grace\n")
            self._next_stage()
            return
        self._kill(why)

    def _kill(self, why: str) -> None:
        if self._killed or self._ended:
            return
        self._killed = True
        for name in ("silence", "max_time"):
            self._cancel(name)
        self._header(f"\n{why}, attempting to kill\n")
        self._kill_plan.start()
        self._next_stage(first=True)

    def _next_stage(self, first: bool = False) -> None:
        """Send the next signal of the kill; after the last, wait BACKUP_TIMEOUT and give up."""
        self._timers.pop("stage", None)
        plan = self._kill_plan
        if self._ended or not plan.pending:
            return
        sig, grace = plan.next_stage()
        if not first and not self._anything_left():
            plan.abandon()  # the tree is gone: only the pipes are left to close
        else:
            if not first:
                self._header(plan.escalation_header(sig))
            self._signal_tree(sig)
        if plan.pending:
            self._timers["stage"] = self.reactor.callLater(grace, self._next_stage)
            return
        self._timers["backup"] = self.reactor.callLater(BACKUP_TIMEOUT, self._backup_timeout)
        if self._exited and "leftovers" not in self._timers:
            self._timers["leftovers"] = self.reactor.callLater(LEFTOVER_GRACE, self._leftovers)

    def _anything_left(self) -> bool:
        if not self._exited:
            return True
        return self.tree is not None and bool(self.tree.members(include_root=False))

    def _signal_tree(self, sig: int) -> None:
        if self.tree is None:
            return
        hit = self._kill_plan.send(self.tree, sig, include_root=not self._exited, root=self.pid)
        log.debug("sent {sig} to {n} process(es) of pid {pid}", sig=signal_name(sig), n=len(hit),
                  pid=self.pid)

    def _backup_timeout(self) -> None:
        self._timers.pop("backup", None)
        if self._ended or self._deferred is None:
            return
        name = signal_name(self._kill_plan.last_signal)
        self._header(f"{name} failed to kill process\n")
        self._report_victims()
        if self.send_rc:
            self._header(f"using fake rc={KILLED_RC}\n")
            self.updates.add("rc", KILLED_RC)
        self._stop_watchers()
        self._cancel_all()
        if self._transport is not None:
            self._transport.loseConnection()
        self._close_run()
        d, self._deferred = self._deferred, None
        d.errback(KillFailed(f"{name} failed to kill process"))

    def _report_victims(self) -> None:
        report = self._kill_plan.report()
        if report:
            self._header(report)

    # -- ending --------------------------------------------------------------------------------

    def _on_exit(self, reason) -> None:
        """The child itself is gone (reaped); its output pipes may still be held open."""
        self._exited = True
        if self._ended:
            return
        if self._killed:
            if self._kill_plan.pending:
                return  # the rest of the tree has its grace, as the child had
            self._signal_tree(self._kill_plan.last_signal)  # newcomers go the way the others went
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
                self._header(f"\nthe command exited but left processes holding its output "
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
            self._close_run()
            return  # already given up on it (backup timeout)
        if sig is not None or self._killed or rc is None:
            rc = KILLED_RC
        elapsed = self.reactor.seconds() - self._start_time
        self._report_victims()
        self._close_run()
        if self.send_rc:
            if sig is not None:
                self._header(f"process killed by signal {sig}\n")
            self.updates.add("rc", rc)
        self._header(f"elapsedTime={elapsed:0.6f}\n")
        if not self._interrupted:
            self.updates.add("elapsed", elapsed)
        d, self._deferred = self._deferred, None
        d.callback(rc)

    def _close_run(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            self.containment.close_run(run)

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
