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


class _ChildSetup:
    """What every child does between fork and exec, beyond Twisted's own setup.

    - It dies with the slave: PR_SET_PDEATHSIG sends it SIGKILL when the slave process goes,
      even by SIGKILL (nothing else would stop a child that does not write to its pipes).
      Its own descendants are only reached through it, or by a later kill of the tree.
    - With `cgroup_procs` (a cgroup's cgroup.procs file) it moves itself into that cgroup
      before exec, so everything it ever starts is born inside (bbx/slave/cgroup.py). If that
      fails it says so on stderr and runs anyway: the /proc search still finds its tree.
    - When exec fails it says why on stderr and exits like a shell would; Twisted's own
      fallback prints a Python traceback and exits 1, which reads as a crash of bbx.
    """

    def __init__(self, *args, cgroup_procs: str | None = None, **kwargs):
        self._slave_pid = os.getpid()
        self._cgroup_procs = cgroup_procs
        super().__init__(*args, **kwargs)

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


class SessionProcess(_ChildSetup, process.Process):
    """A pipe-connected child that calls setsid() before exec.

    Why setsid and not just setpgid (as the worker does): a session survives its leader's
    process groups changing (a shell running `cmd &` under job control puts jobs in new
    groups), and every member keeps the session id, so /proc tells us who belongs to the run.
    Twisted only offers that for PTYs, so we hook its fork path. posix_spawn could do setsid
    too, but it cannot chdir, and we always run in a workdir — so this class always forks.
    """

    processReaderFactory = _PipeReader

    def _trySpawnInsteadOfFork(self, *args, **kwargs):
        return False

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
