"""The process tree of one run: every process a command's child started, found and signalled.

On Linux the tree is found through /proc; elsewhere only the child's process group is reachable.
"""

from __future__ import annotations

import os
import signal

_PROC = "/proc"
# Rounds of "find members, freeze them" before signalling; each round catches the children
# forked since the last one, and a frozen process cannot fork, so this converges fast.
FREEZE_ROUNDS = 20


class ProcessTree:
    """Everything one child started: found through /proc, signalled all at once.

    A process belongs to the tree when any of these holds: it is the root; it is in the
    root's session or process group; its parent belongs; it carries `cookie` (an exact
    NAME=value entry) in its environment; it holds one of `pipe_inodes` (the child's pipes)
    open. The slave itself and its parent are never members.
    """

    def __init__(self, root: int, *, cookie: str, pipe_inodes=()) -> None:
        self.root = root
        self.cookie = cookie.encode("utf-8", "surrogateescape")
        self.pipe_links = {f"pipe:[{ino}]" for ino in pipe_inodes}
        self.exempt = {os.getpid(), os.getppid(), 1}
        self.have_proc = os.path.isdir(os.path.join(_PROC, "self"))

    def members(self, *, include_root: bool = True) -> set[int]:
        """Live (non-zombie) members.

        Pass include_root=False once the root has been reaped: its pid may then be reused, so
        neither it nor its children count. (Session and group ids stay safe: Linux does not
        reuse a pid while some process still has it as its session or group id.)
        """
        if not self.have_proc:
            return set()
        table = {}
        for name in os.listdir(_PROC):
            if not name.isdigit():
                continue
            pid = int(name)
            stat = _read_stat(pid)
            if stat is not None and pid not in self.exempt:
                table[pid] = stat
        found = set()
        for pid, (state, ppid, pgrp, sid) in table.items():
            if state in "ZX":
                continue
            if (include_root and pid == self.root) or sid == self.root or pgrp == self.root \
                    or self._marked(pid):
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

    def _marked(self, pid: int) -> bool:
        try:
            with open(f"{_PROC}/{pid}/environ", "rb") as f:
                if self.cookie in f.read().split(b"\0"):
                    return True
        except OSError:
            return False
        if self.pipe_links:
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

    def signal(self, sig: int, *, include_root: bool = True) -> int:
        """Send `sig` to every member, frozen first so none escapes; how many were signalled.

        `include_root` is False once the root has been reaped: its pid may be reused.
        """
        if not self.have_proc:
            if include_root:
                for send in (os.killpg, os.kill):
                    try:
                        send(self.root, sig)
                        break
                    except OSError:
                        pass
            return 0
        # Each member gets `sig` exactly once: a second SIGTERM can land while a handler is
        # already exiting (Python resets handlers at shutdown) and turn a clean exit into a kill.
        frozen: set[int] = set()
        for _ in range(FREEZE_ROUNDS):
            new = self.members(include_root=include_root) - frozen
            if not new:
                break
            for pid in new:
                _send(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _send(pid, sig)
        for pid in frozen:
            _send(pid, signal.SIGCONT)
        return len(frozen)


def _read_stat(pid: int):
    """(state, ppid, pgrp, session) of a process, or None if it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
