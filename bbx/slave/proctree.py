"""The process tree of one run: every process a command's child started, found and signalled.

On Linux the tree is found through /proc (and the run's cgroup, where it has one); elsewhere
only the child's process group is reachable. Pure os calls, no Twisted: the guard process
(bbx/slave/guard.py) uses this too.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Iterable

_PROC = "/proc"
# Set in every command's environment (never shown in headers) so its descendants can be found
# even after they left its session and were re-parented.
COOKIE_VAR = "BBX_RUN_COOKIE"
# Rounds of "find members, freeze them" before signalling; each round catches the children
# forked since the last one, and a frozen process cannot fork, so this converges fast.
FREEZE_ROUNDS = 20
# How much of a process's command line a report shows (program base name, then arguments).
DESCRIBE_CHARS = 80


class ProcessTree:
    """Everything one child started: found through /proc, signalled all at once.

    A process belongs to the tree when any of these holds: it is the root; it is in the
    root's session or process group; it is in `cgroup` (a bbx.slave.cgroup.Cgroup); it is one
    of `adopted()` (orphans the slave, as their subreaper, took over for this run); its parent
    belongs; it carries `cookie` (an exact NAME=value entry) in its environment; it holds one
    of `pipe_inodes` (the child's pipes) open. The slave itself and its parent are never members.
    """

    def __init__(self, root: int, *, cookie: str, pipe_inodes=(), cgroup=None,
                 adopted: Callable[[], Iterable[int]] | None = None,
                 exempt: Iterable[int] = ()) -> None:
        self.root = root
        self.cookie = cookie.encode("utf-8", "surrogateescape")
        self.pipe_links = {f"pipe:[{ino}]" for ino in pipe_inodes}
        self.cgroup = cgroup
        self.adopted = adopted
        self.exempt = {os.getpid(), os.getppid(), 1, *exempt}
        self.have_proc = os.path.isdir(os.path.join(_PROC, "self"))

    def members(self, *, include_root: bool = True, table=None, pipes: bool = True,
                cookie: bool = True) -> set[int]:
        """Live (non-zombie) members; `table` is a process_table() to reuse, if any. Without
        `pipes` the holders of the child's pipes are not looked for (the costly part: every fd
        of every process; pointless once the pipes are closed), without `cookie` the carriers
        of the cookie (every process's environment).

        Pass include_root=False once the root has been reaped: its pid may then be reused, so
        neither it nor its children count. (Session and group ids stay safe: Linux does not
        reuse a pid while some process still has it as its session or group id.)
        """
        if not self.have_proc:
            return set()
        table = dict(process_table() if table is None else table)
        for pid in self.exempt:
            table.pop(pid, None)
        seeds = set(self.cgroup.pids()) if self.cgroup is not None else set()
        if self.adopted is not None:
            seeds.update(self.adopted())
        found = set()
        for pid, (state, ppid, pgrp, sid) in table.items():
            if state in "ZX":
                continue
            if (include_root and pid == self.root) or sid == self.root or pgrp == self.root \
                    or pid in seeds or (cookie and self._marked(pid, pipes)):
                found.add(pid)
        children: dict[int, list[int]] = {}
        for pid, (state, ppid, _, _) in table.items():
            if state not in "ZX":
                children.setdefault(ppid, []).append(pid)
        todo = list(found)
        if include_root and self.root not in found:
            todo.append(self.root)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def _marked(self, pid: int, pipes: bool = True) -> bool:
        try:
            with open(f"{_PROC}/{pid}/environ", "rb") as f:
                if self.cookie in f.read().split(b"\0"):
                    return True
        except OSError:
            return False
        if self.pipe_links and pipes:
            fd_dir = f"{_PROC}/{pid}/fd"
            try:
                for fd in os.listdir(fd_dir):
                    try:
                        if os.readlink(f"{fd_dir}/{fd}") in self.pipe_links:
                            return True
                    except OSError:
                        pass
            except OSError:
                pass
        return False

    def signal(self, sig: int, *, include_root: bool = True, skip: Iterable[int] = (),
               pipes: bool = True) -> dict[int, str]:
        """Send `sig` to every member not in `skip`, frozen first so none escapes.

        Returns {pid: what it runs} for every process signalled. `include_root` is False once
        the root has been reaped: its pid may be reused; `pipes` as for members(). With SIGKILL
        and a cgroup, the cgroup is killed as a whole too, which also takes children forked
        while we looked.
        """
        if not self.have_proc:
            if include_root:
                for send in (os.killpg, os.kill):
                    try:
                        send(self.root, sig)
                        return {self.root: ""}
                    except OSError:
                        pass
            return {}
        # Each member gets `sig` exactly once: a second SIGTERM can land while a handler is
        # already exiting (Python resets handlers at shutdown) and turn a clean exit into a kill.
        skip = set(skip)
        frozen: set[int] = set()
        for _ in range(FREEZE_ROUNDS):
            new = self.members(include_root=include_root, pipes=pipes) - frozen - skip
            if not new:
                break
            for pid in new:
                _send(pid, signal.SIGSTOP)
            frozen |= new
        report = {pid: describe(pid) for pid in frozen}
        if sig == signal.SIGKILL and self.cgroup is not None:
            self.cgroup.kill()
        for pid in frozen:
            _send(pid, sig)
        for pid in frozen:
            _send(pid, signal.SIGCONT)
        return report


def process_table() -> dict[int, tuple[str, int, int, int]]:
    """{pid: (state, ppid, pgrp, session)} of every process /proc shows."""
    table = {}
    for name in os.listdir(_PROC):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


def read_stat(pid: int):
    """(state, ppid, pgrp, session) of a process, or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process for ever."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _stat_fields(pid: int):
    """/proc/PID/stat from its third field (state) on, or None if the process is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def describe(pid: int) -> str:
    """A short command line for reports ("sleep 300"), or "" if the process is gone."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            argv = [a for a in f.read(4096).split(b"\0") if a]
    except OSError:
        return ""
    if argv:
        argv[0] = os.path.basename(argv[0]) or argv[0]
    text = " ".join(a.decode("utf-8", "replace") for a in argv)
    return text if len(text) <= DESCRIBE_CHARS else text[:DESCRIBE_CHARS - 1] + "…"


def children_of(pid: int) -> set[int]:
    """The direct children of `pid` (every thread's), through /proc."""
    found: set[int] = set()
    task_dir = f"{_PROC}/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            # A kernel without CONFIG_PROC_CHILDREN: look at every process's parent.
            return {p for p, (_, ppid, _, _) in process_table().items() if ppid == pid}
        except (OSError, ValueError):
            pass
    return found


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
