"""The guard: a small process that kills what a dead slave's commands left running.

    python -S -c 'import sys; sys.path.insert(0, ROOT); ...' --slave PID --log SLAVE_LOG
                 [--cgroup DIR] [--stale DIR]...      (see bbx/slave/containment.py)

The slave starts one at start-up (bbx/slave/containment.py) in its own session, so neither
a SIGKILL of the slave nor a kill of the slave's process group reaches it. It reads what the
slave tells it on stdin, one line each, and on end of file — the slave exited, however it
died — kills everything the slave's commands left: the slave's cgroup subtree with cgroup.kill,
and every process of the runs it was told about (found as the slave finds them, bbx/slave/
proctree.py). Then it removes the cgroups and exits. At start it first kills and removes the
`--stale` subtrees earlier processes of the same slave left behind.

Lines from the slave (ASCII, one per event):

    run COOKIE              a command is about to start; its processes carry the cookie
    pid COOKIE PID START    that command's child is PID, started at START (clock ticks)
    adopt PID START         an orphan the slave took over as its subreaper
    gone PID                that orphan has exited (and was reaped)
    end COOKIE              that command and everything it started are gone
    bye                     the slave is stopping cleanly (it cleaned up itself)

It imports no Twisted and nothing of the slave but cgroup.py and proctree.py, and runs without
`site`, so it starts in a few tens of milliseconds and stays small (about 8 MiB).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from bbx.slave.cgroup import Cgroup
from bbx.slave.proctree import COOKIE_VAR, ProcessTree, describe, start_time

# How long killed processes may take to be gone from their cgroup before it is left in place
# (the slave's next start removes it). SIGKILL takes milliseconds; a process stuck in
# uninterruptible I/O (a dead NFS server) can take for ever.
CGROUP_EMPTY_WAIT = 5.0
POLL = 0.02
# Rounds of "find what is left of the runs, kill it" after the slave died.
KILL_ROUNDS = 5
# A line longer than this is not from the slave: ignored.
MAX_LINE = 4096
# How many processes a log line names before it says "and N more".
NAMED_IN_LOG = 10


class Guard:
    """What the guard knows about the slave's runs, and how it cleans up after them."""

    def __init__(self, log_path: str | None, cgroup: str | None, slave_pid: int) -> None:
        self.log_path = log_path
        self.cgroup = Cgroup(cgroup) if cgroup else None
        self.slave_pid = slave_pid
        self.runs: dict[str, tuple[int, int] | None] = {}  # cookie -> (pid, start) of its child
        self.adopted: dict[int, int] = {}  # pid -> start time
        self.clean = False

    def log(self, text: str) -> None:
        if not self.log_path:
            return
        t = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{stamp} guard (pid {os.getpid()}): {text}\n".encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError:
            pass

    def handle(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        kind, args = words[0], words[1:]
        try:
            if kind == "run" and len(args) == 1:
                self.runs.setdefault(args[0], None)
            elif kind == "pid" and len(args) == 3:
                self.runs[args[0]] = (int(args[1]), int(args[2]))
            elif kind == "adopt" and len(args) == 2:
                self.adopted[int(args[0])] = int(args[1])
            elif kind == "gone" and len(args) == 1:
                self.adopted.pop(int(args[0]), None)
            elif kind == "end" and len(args) == 1:
                self.runs.pop(args[0], None)
            elif kind == "bye":
                self.clean = True
        except ValueError:
            pass

    def clean_stale(self, paths: list[str]) -> None:
        """Kill and remove subtrees that earlier processes of this slave left."""
        for path in paths:
            group = Cgroup(path)
            victims = {pid: describe(pid) for pid in group.pids()}
            group.kill()
            gone = self._wait_empty(group) and group.remove()
            what = f"; killed {_named(victims)}" if victims else ""
            state = "removed" if gone else "could not remove (still busy)"
            self.log(f"{state} cgroup {path} left by an earlier process of this slave{what}")

    def kill_everything(self) -> None:
        """The slave is gone: kill what its runs left, remove its cgroups."""
        killed: dict[int, str] = {}
        if self.cgroup is not None:
            killed.update({pid: describe(pid) for pid in self.cgroup.pids()})
            self.cgroup.kill()
        adopted = {pid for pid, start in self.adopted.items() if start_time(pid) == start}
        trees = []
        for cookie, child in self.runs.items():
            root_alive = child is not None and start_time(child[0]) == child[1]
            root = child[0] if child is not None else -1
            trees.append((ProcessTree(root, cookie=f"{COOKIE_VAR}={cookie}", exempt=[self.slave_pid]),
                          root_alive))
        if adopted:
            trees.append((ProcessTree(-1, cookie=f"{COOKIE_VAR}=-", adopted=lambda: adopted,
                                      exempt=[self.slave_pid]), False))
        for _ in range(KILL_ROUNDS):
            hit = {}
            for tree, root_alive in trees:
                hit.update(tree.signal(signal.SIGKILL, include_root=root_alive, skip=killed))
            if not hit:
                break
            killed.update(hit)
        if self.cgroup is not None:
            if not (self._wait_empty(self.cgroup) and self.cgroup.remove()):
                self.log(f"could not remove cgroup {self.cgroup.path} (still busy); "
                         "the slave's next start removes it")
        if killed and not self.clean:
            self.log(f"the slave (pid {self.slave_pid}) is gone; killed what its commands left: "
                     f"{_named(killed)}")
        elif killed:
            self.log(f"killed what the stopped slave's commands left: {_named(killed)}")

    @staticmethod
    def _wait_empty(group: Cgroup) -> bool:
        deadline = time.monotonic() + CGROUP_EMPTY_WAIT
        while group.populated():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True


def _named(victims: dict[int, str]) -> str:
    items = [f"{pid} ({what})" if what else str(pid) for pid, what in sorted(victims.items())]
    more = len(items) - NAMED_IN_LOG
    text = ", ".join(items[:NAMED_IN_LOG])
    noun = "process" if len(items) == 1 else "processes"
    return f"{len(items)} {noun}: {text}" + (f" and {more} more" if more > 0 else "")


def read_lines(fd: int):
    """Lines from `fd` until end of file (the slave's end of the pipe closed)."""
    buf = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if len(line) <= MAX_LINE:
                yield line.decode("ascii", "replace")
        if len(buf) > MAX_LINE:
            buf = b""


def parse(argv: list[str]) -> dict:
    """--slave PID --log PATH --cgroup DIR --stale DIR... (no argparse: it costs a megabyte)."""
    options: dict = {"slave": os.getppid(), "log": None, "cgroup": None, "stale": []}
    for flag, value in zip(argv[::2], argv[1::2]):
        key = flag.lstrip("-")
        if key == "stale":
            options["stale"].append(value)
        elif key == "slave":
            options["slave"] = int(value)
        elif key in options:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    # The slave's stop, a terminal's Ctrl-C or hang-up must not take the guard first.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    guard = Guard(options["log"], options["cgroup"], options["slave"])
    try:
        guard.clean_stale(options["stale"])
        for line in read_lines(0):
            guard.handle(line)
        guard.kill_everything()
    except Exception:
        import traceback

        guard.log("failed: " + traceback.format_exc().replace("\n", " | "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
