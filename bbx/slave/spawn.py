"""Spawning a command's child: a new session, its cgroup, death with the slave, shell-like exec
failures; and the slave's own process-wide settings for its children (subreaper)."""

from __future__ import annotations

import errno
import os
import signal
import sys

from twisted.internet import main, process

# Twisted reads pipes 8 KiB at a time; a Linux pipe holds 64 KiB, so reading that much per
# wake-up means up to eight times fewer reactor turns and updates per MB at full speed.
PIPE_READ_SIZE = 64 * 1024

# What a shell answers for a command it cannot find / cannot execute (POSIX 2.8.2).
NOT_FOUND_RC = 127
NOT_EXECUTABLE_RC = 126


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None  # not Linux: a killed slave leaves its child running, as the worker does


_prctl = _load_prctl() if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>, Linux 3.4


def set_child_subreaper() -> bool:
    """Make this process the subreaper of its descendants: an orphan among them (its parent
    exited: a double fork, a daemon) becomes our child instead of init's, so it can still be
    found and killed, and must be reaped by us. True if the kernel agreed."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


# clone3(2) with CLONE_INTO_CGROUP (Linux 5.7): a child born in its cgroup. Moving a process
# into a cgroup afterwards (a write to cgroup.procs) takes a lock whose writer waits for an RCU
# grace period once writes are more than a few ms apart, as one command per build is: 6-16 ms
# each here, the largest part of a trivial build (bench/README.md). Its number is 435 in the
# generic syscall table, which both x86-64 and arm64 use.
_SYS_CLONE3 = {"x86_64": 435, "aarch64": 435, "arm64": 435}
CLONE_INTO_CGROUP = 0x200000000
# struct clone_args (linux/sched.h), version 2: up to `cgroup`.
_CLONE_ARGS = ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
               "tls", "set_tid", "set_tid_size", "cgroup")
_clone3_state: list = []  # [] not decided yet; [function], or [None] once it cannot be used


def _clone3():
    """clone_into(cgroup_fd) -> pid (0 in the child), or None where clone3 cannot be used."""
    if _clone3_state:
        return _clone3_state[0]
    import platform

    number = _SYS_CLONE3.get(platform.machine()) if sys.platform.startswith("linux") else None
    if number is None or os.environ.get(SPAWN_ENV) == "fork":
        _clone3_state.append(None)
        return None
    import ctypes

    # PyDLL: the call keeps the GIL, so the child resumes Python holding it, as after fork().
    syscall = ctypes.PyDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    args_type = type("clone_args", (ctypes.Structure,),
                     {"_fields_": [(f, ctypes.c_uint64) for f in _CLONE_ARGS]})

    def clone_into(cgroup_fd: int) -> int:
        args = args_type(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
        pid = syscall(number, ctypes.byref(args), ctypes.sizeof(args))
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone3")
        return pid
    _clone3_state.append(clone_into)
    return clone_into


class _ChildSetup:
    """What every child does between fork and exec, beyond Twisted's own setup.

    - It dies with the slave: PR_SET_PDEATHSIG sends it SIGKILL when the slave process goes,
      even by SIGKILL (nothing else would stop a child that does not write to its pipes).
      Its own descendants are only reached through it, or by a later kill of the tree.
    - With `cgroup_procs` (a cgroup's cgroup.procs file) it is born in that cgroup (clone3
      with CLONE_INTO_CGROUP instead of fork), so everything it ever starts is inside too
      (bbx/slave/cgroup.py). Where clone3 cannot, it forks and moves itself in before exec;
      if that fails it says so on stderr and runs anyway: the /proc search still finds it.
    - When exec fails it says why on stderr and exits like a shell would; Twisted's own
      fallback prints a Python traceback and exits 1, which reads as a crash of bbx.
    """

    def __init__(self, *args, cgroup_procs: str | None = None, **kwargs):
        self._slave_pid = os.getpid()
        self._cgroup_procs = cgroup_procs
        self.spawned_by = "fork"
        super().__init__(*args, **kwargs)

    def _fork(self, path, uid, gid, executable, args, environment, **kwargs):
        if self._cgroup_procs is not None and self._clone_into_cgroup(
                path, uid, gid, executable, args, environment, kwargs):
            self.spawned_by = "clone3"
            return
        super()._fork(path, uid, gid, executable, args, environment, **kwargs)

    def _clone_into_cgroup(self, path, uid, gid, executable, args, environment, kwargs) -> bool:
        """Twisted's fork and child setup, with clone3 born in the cgroup; False (nothing
        done) where clone3 cannot, after which it is not tried again."""
        clone_into = _clone3()
        if clone_into is None:
            return False
        import gc

        try:
            cgroup_fd = os.open(os.path.dirname(self._cgroup_procs),
                                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False  # the fork path reports the cgroup problem on the command's stderr
        collecting = gc.isenabled()
        gc.disable()  # as Twisted does around fork: no collection in the child's copy
        try:
            pid = clone_into(cgroup_fd)
        except OSError:
            pid = -1
        if pid == 0:  # the child: exec or _exit, never return
            try:
                sys.settrace(None)
                self._cgroup_procs = None  # already inside
                self._setupChild(**kwargs)
                self._execChild(path, uid, gid, executable, args, environment)
            except BaseException as e:
                try:
                    os.write(2, f"bbx: cannot start {executable}: {e}\n".encode("utf-8", "replace"))
                except BaseException:
                    pass
            finally:
                os._exit(NOT_EXECUTABLE_RC)
        if collecting:
            gc.enable()
        os.close(cgroup_fd)
        if pid < 0:
            _clone3_state[:] = [None]  # an old kernel, or a policy against it: fork from now on
            return False
        self.pid = pid
        self.status = -1
        return True

    def _execChild(self, path, uid, gid, executable, args, environment):
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._slave_pid:  # the slave died before prctl took effect
                os._exit(NOT_EXECUTABLE_RC)
        if self._cgroup_procs is not None:
            try:
                fd = os.open(self._cgroup_procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as e:
                os.write(2, f"bbx: could not move the command into its cgroup "
                            f"({e.strerror}); running it without\n".encode("utf-8", "replace"))
        try:
            super()._execChild(path, uid, gid, executable, args, environment)
        except OSError as e:
            try:
                where = f" in {path}" if path else ""
                os.write(2, f"bbx: cannot run {executable}{where}: {e.strerror}\n".encode("utf-8", "replace"))
            finally:
                os._exit(NOT_FOUND_RC if e.errno == errno.ENOENT else NOT_EXECUTABLE_RC)


class _PipeReader(process.ProcessReader):
    """A ProcessReader that reads PIPE_READ_SIZE per wake-up instead of 8 KiB."""

    def doRead(self):
        try:
            data = os.read(self.fd, PIPE_READ_SIZE)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.proc.childDataReceived(self.name, data)
        return None


# The fork-free start (see SessionProcess): a POSIX shell that enters the workdir and the
# cgroup, then setpriv to set the parent-death signal, then the command, all one process.
# dash, not whatever /bin/sh is: dash adds nothing to the environment but OLDPWD, which the
# script puts back as it was; bash would also export SHLVL and `_`.
_ENTER = ('case ${OLDPWD+set} in set) o=$OLDPWD; cd "$1" || exit 126; OLDPWD=$o;; '
          '*) cd "$1" || exit 126; unset OLDPWD;; esac; '
          'if [ -n "$2" ]; then echo 0 2>/dev/null >"$2" || echo "bbx: could not move the '
          'command into its cgroup; running it without" >&2; fi; shift 2; exec "$@"')
_SHELLS = ("/bin/dash", "/usr/bin/dash")
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
# BBX_SPAWN=fork makes every command fork, as before the fork-free start existed.
SPAWN_ENV = "BBX_SPAWN"
_spawn_tools: tuple[str, str] | None = None


def choose_spawner() -> str:
    """Decide once, at the slave's start, how commands are started; returns a phrase for the
    log. The fork-free start needs Linux, dash, and a setpriv with --pdeathsig (util-linux
    2.33, 2018): it is tried once here, so a command never fails on a missing tool."""
    global _spawn_tools
    _spawn_tools = None
    import shutil
    import subprocess

    if os.environ.get(SPAWN_ENV) == "fork":
        return f"forks the slave ({SPAWN_ENV}=fork)"
    if (not sys.platform.startswith("linux") or not hasattr(os, "posix_spawn")
            or not hasattr(process, "_getFileActions") or not hasattr(os, "POSIX_SPAWN_DUP2")):
        return "forks the slave (no posix_spawn here)"
    shell = next((s for s in _SHELLS if os.access(s, os.X_OK)), None)
    setpriv = shutil.which("setpriv", path=_TOOL_PATH)
    if shell is None or setpriv is None:
        return f"forks the slave (no {'dash' if shell is None else 'setpriv'} found)"
    try:
        probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", shell, "-c", ":"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"forks the slave (setpriv did not run: {e})"
    if probe.returncode != 0:
        return "forks the slave (this setpriv has no --pdeathsig)"
    _spawn_tools = (shell, setpriv)
    return f"posix_spawn through {shell} and {setpriv}"


class SessionProcess(_ChildSetup, process.Process):
    """A pipe-connected child that calls setsid() before exec.

    Why setsid and not just setpgid (as the worker does): a session survives its leader's
    process groups changing (a shell running `cmd &` under job control puts jobs in new
    groups), and every member keeps the session id, so /proc tells us who belongs to the run.

    Three ways to start it, the first that applies:
    - with a cgroup: clone3 born in it (_ChildSetup), then Twisted's child setup and exec;
    - without one, where choose_spawner() found the tools: posix_spawn (vfork: no copy of the
      slave's page tables, no Python in the child) of dash running _ENTER, which enters the
      workdir (and, where clone3 is missing, the cgroup) and execs setpriv, which sets
      PR_SET_PDEATHSIG and execs the command: one process, three execs, ~4 ms against ~6 ms
      for a fork of the ~50 MB slave (bench/README.md). What it gives up: the fork path
      checks that the slave is still alive once the death signal is set; here a slave that
      dies within that millisecond leaves the command to the guard, which kills every
      process carrying its cookie;
    - fork, as _ChildSetup describes: when neither applies, or BBX_SPAWN=fork.
    """

    processReaderFactory = _PipeReader

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment, kwargs):
        tools = _spawn_tools
        if (tools is None or uid is not None or gid is not None or not path
                or not args or args[0] != executable):
            return False
        import fcntl

        shell, setpriv = tools
        open_fds = []
        for fd in process._listOpenFDs():
            try:
                open_fds.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
            except OSError:
                pass  # the descriptor of the listing itself, already closed
        actions = process._getFileActions(open_fds, kwargs.get("fdmap") or {},
                                          doClose=os.POSIX_SPAWN_CLOSE, doDup2=os.POSIX_SPAWN_DUP2)
        # As the fork path does: signals Python ignores (SIGPIPE) are the default again.
        ignored = [n for n in range(1, signal.NSIG) if signal.getsignal(n) == signal.SIG_IGN]
        argv = [shell, "-c", _ENTER, "bbx", os.path.abspath(path), self._cgroup_procs or "",
                setpriv, "--pdeathsig", "KILL", "--", *args]
        self.pid = os.posix_spawn(shell, argv, environment if environment is not None
                                  else os.environ, file_actions=actions, setsid=True,
                                  setsigdef=ignored)
        self.status = -1
        self.spawned_by = "posix_spawn"
        return True

    def _setupChild(self, fdmap):
        super()._setupChild(fdmap)
        os.setsid()


class SessionPTYProcess(_ChildSetup, process.PTYProcess):
    """A PTY child; Twisted's PTYProcess already makes it a session leader."""


class DetachedProcess(process.Process):
    """A pipe-connected child in its own session that does NOT die with the slave: the guard
    (bbx/slave/guard.py), which must outlive a SIGKILLed slave and its process group."""

    def _trySpawnInsteadOfFork(self, *args, **kwargs):
        return False

    def _setupChild(self, fdmap):
        super()._setupChild(fdmap)
        os.setsid()
