"""Keeping every process a command starts within the slave's reach, even after the slave dies.

One `Containment` per slave process. It chooses, once, the strongest means the host allows:

- **cgroup**: each command runs in its own cgroup v2 under a bbx-owned subtree of the slave's
  cgroup (bbx/slave/cgroup.py); nothing it starts can leave it, and cgroup.kill ends it all.
- **subreaper** (no cgroup can be made): the slave is the subreaper of its descendants, so a
  process whose parent exited — double-forked, setsid, `env -i`, output closed — becomes the
  slave's child. Such an *adopted* orphan counts for the one command that was running when it
  was first seen, or whose workdir it is in (with several commands at once and neither rule
  holding, it is killed when the slave stops). The slave reaps them: no zombies.
- The subreaper is set in cgroup mode too; on other systems only process groups are left.

And in every mode a *guard* (bbx/slave/guard.py), started in its own session and told of each
run, kills whatever the runs left when the slave exits — SIGKILL included — and removes the
cgroups; at start it removes the subtrees an earlier, killed process of the same slave left.

A command that exits normally may leave background processes that let go of its output
(Buildbot lets them live, and a later step may use them): they *linger*, and are killed when
the slave stops or dies.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from dataclasses import dataclass, field

from twisted.internet import defer, process, protocol, task
from twisted.logger import Logger

import bbx
from bbx.slave.cgroup import Cgroup, CgroupTree
from bbx.slave.proctree import COOKIE_VAR, ProcessTree, children_of, process_table, start_time
from bbx.slave.spawn import DetachedProcess, choose_spawner, set_child_subreaper

log = Logger(namespace="bbx.slave")

# How often adopted orphans are looked for (and reaped once they exit) and lingering runs are
# checked. Reading /proc/self/task/*/children costs microseconds; a zombie waits at most this.
ORPHAN_SCAN_INTERVAL = 0.5
# A guard that exits while the slave runs is started again after this long.
GUARD_RESTART_DELAY = 1.0
# How long stop() waits for killed processes to leave their cgroups before removing them.
STOP_WAIT = 2.0
STOP_POLL = 0.05


def slave_key(basedir: str) -> str:
    """A short stable name for the slave in `basedir` (its cgroup subtree is named after it)."""
    return hashlib.sha256(os.path.realpath(basedir).encode("utf-8", "surrogateescape")).hexdigest()[:12]


@dataclass(eq=False)
class Run:
    """One command's place in the containment."""

    cookie: str
    workdir: str
    cgroup: Cgroup | None = None
    pid: int | None = None
    start: int | None = None
    tree: ProcessTree | None = field(default=None, repr=False)


class _GuardProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: "Containment") -> None:
        self.owner = owner

    def processEnded(self, reason) -> None:
        self.owner._guard_ended(reason)


class Containment:
    """See the module docstring. `start()` once before the first command, `stop()` at the end."""

    def __init__(self, reactor, *, key: str, cgroups: bool = True, guard: bool = True,
                 log_path: str | None = None) -> None:
        self.reactor = reactor
        self.key = key
        self.want_cgroups = cgroups
        self.want_guard = guard
        self.log_path = log_path
        self.tree: CgroupTree | None = None
        self.subreaper = False
        self.why_no_cgroup = "disabled in slave.toml (cgroup = false)" if not cgroups else ""
        self.active: dict[str, Run] = {}
        self.lingering: dict[str, Run] = {}
        self.orphans: dict[int, tuple[int | None, frozenset[str]]] = {}  # pid -> (start, owners)
        self._guard = None
        self._guard_fd: int | None = None
        self._stopping = False
        self._loop: task.LoopingCall | None = None
        self._cgroup_warned = False

    @property
    def mode(self) -> str:
        if self.tree is not None:
            return "cgroup"
        return "subreaper" if self.subreaper else "process group"

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.subreaper = set_child_subreaper()
        log.info("commands start by {how}", how=choose_spawner())
        stale: list[Cgroup] = []
        if self.want_cgroups:
            self.tree, self.why_no_cgroup = CgroupTree.create(self.key)
            if self.tree is not None:
                stale = self.tree.stale_instances()
        if self.tree is not None:
            log.info("commands run in their own cgroups under {path}", path=self.tree.root.path)
        elif self.subreaper:
            log.info("commands run without cgroups ({why}); the slave adopts their orphans",
                     why=self.why_no_cgroup)
        else:
            log.info("commands run without cgroups ({why}); only their process groups and "
                     "sessions can be found", why=self.why_no_cgroup)
        if self.want_guard:
            self._start_guard([g.path for g in stale])
        elif stale:
            for group in stale:
                group.kill()
        if self.subreaper or self.tree is not None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(ORPHAN_SCAN_INTERVAL, now=False)

    @defer.inlineCallbacks
    def stop(self):
        """Kill what finished commands left (and orphans), remove the cgroups, dismiss the guard."""
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        runs = list(self.lingering.values()) + list(self.active.values())
        killed = {}
        for run in runs:
            if run.cgroup is not None:
                run.cgroup.kill()
            tree = run.tree or ProcessTree(-1, cookie=_cookie_entry(run.cookie))
            # Running commands were killed before (Slave.stop); every run's pipes are closed.
            killed.update(tree.signal(signal.SIGKILL, include_root=False, pipes=False))
        self.scan()
        if self.orphans:
            orphans = set(self.orphans)
            killed.update(ProcessTree(-1, cookie=_cookie_entry("-"), adopted=lambda: orphans)
                          .signal(signal.SIGKILL, include_root=False, pipes=False))
        if killed:
            log.info("killed {n} process(es) that commands left running", n=len(killed))
        if self.tree is not None:
            deadline = self.reactor.seconds() + STOP_WAIT
            while self.tree.root.populated() and self.reactor.seconds() < deadline:
                yield task.deferLater(self.reactor, STOP_POLL, lambda: None)
            if not self.tree.root.remove():
                log.warn("could not remove cgroup {path}; the slave's guard or next start will",
                         path=self.tree.root.path)
        self.scan()
        self.lingering.clear()
        self._tell("bye")
        self._close_guard()

    # -- runs --------------------------------------------------------------------------------

    def open_run(self, cookie: str, workdir: str) -> Run:
        """A place for a command about to start; its cgroup if one can be made."""
        run = Run(cookie=cookie, workdir=os.path.abspath(workdir))
        if self.tree is not None:
            try:
                run.cgroup = self.tree.new_run(cookie)
            except OSError as e:
                if not self._cgroup_warned:
                    self._cgroup_warned = True
                    log.warn("cannot create a cgroup for a command ({why}); running commands "
                             "without", why=e.strerror or e)
        self.active[cookie] = run
        self._tell(f"run {cookie}")
        return run

    def child_started(self, run: Run, pid: int, tree: ProcessTree) -> None:
        run.pid, run.start, run.tree = pid, start_time(pid), tree
        self._tell(f"pid {run.cookie} {pid} {run.start or 0}")

    def adopted_for(self, run: Run) -> set[int]:
        """The adopted orphans that count as `run`'s (see the module docstring)."""
        self.scan()
        mine = set()
        for pid, (_, owners) in self.orphans.items():
            if owners == {run.cookie} or _cwd_within(pid, run.workdir):
                mine.add(pid)
        return mine

    def close_run(self, run: Run) -> None:
        """The command has ended. What it left running lingers; an empty run is forgotten."""
        self.active.pop(run.cookie, None)
        if self._left_something(run, process_table() if run.cgroup is None else None):
            self.lingering[run.cookie] = run
        else:
            self._forget(run)
        self.check_lingering()

    def check_lingering(self) -> None:
        if not self.lingering:
            return
        table = process_table() if any(r.cgroup is None for r in self.lingering.values()) else None
        for cookie, run in list(self.lingering.items()):
            if not self._left_something(run, table):
                del self.lingering[cookie]
                self._forget(run)

    def _left_something(self, run: Run, table) -> bool:
        if run.cgroup is not None:
            return run.cgroup.populated()
        if run.tree is None:
            return False
        # The run's pipes are closed by now; and as the subreaper we get back everything that
        # left the tree, so the cookie need not be looked for in every process's environment.
        return bool(run.tree.members(include_root=False, table=table, pipes=False,
                                     cookie=not self.subreaper))

    def _forget(self, run: Run) -> None:
        if run.cgroup is not None and not run.cgroup.remove():
            self.lingering[run.cookie] = run  # busy after all: try again later
            return
        self._tell(f"end {run.cookie}")

    # -- orphans -----------------------------------------------------------------------------

    def scan(self) -> None:
        """Note new adopted orphans (and tell the guard), reap the ones that exited."""
        if not self.subreaper:
            return
        children = children_of(os.getpid())
        ours = set(process.reapProcessHandlers)  # Twisted's own children: commands, the guard
        for pid in children - ours:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid
            if reaped:
                if self.orphans.pop(pid, None) is not None:
                    self._tell(f"gone {pid}")
                continue
            if pid not in self.orphans:
                start = start_time(pid)
                self.orphans[pid] = (start, frozenset(self.active))
                self._tell(f"adopt {pid} {start or 0}")
        for pid in list(self.orphans):
            if pid not in children:
                del self.orphans[pid]
                self._tell(f"gone {pid}")

    def _tick(self) -> None:
        self.scan()
        self.check_lingering()

    # -- the guard ---------------------------------------------------------------------------

    def _start_guard(self, stale: list[str]) -> None:
        read_end, write_end = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        # Without `site` (a smaller process); the package is found from where ours was loaded.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(bbx.__file__)))
        argv = [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {package_root!r}); "
                "from bbx.slave.guard import main; sys.exit(main())",
                "--slave", str(os.getpid())]
        if self.log_path:
            argv += ["--log", self.log_path]
        if self.tree is not None:
            argv += ["--cgroup", self.tree.root.path]
        for path in stale:
            argv += ["--stale", path]
        env = {k: v for k, v in os.environ.items() if k != COOKIE_VAR}
        try:
            self._guard = DetachedProcess(self.reactor, sys.executable, argv, env, "/",
                                          _GuardProtocol(self), childFDs={0: read_end, 1: null, 2: null})
        except OSError as e:
            os.close(write_end)
            log.warn("cannot start the guard process ({why}); a killed slave may leave "
                     "processes behind", why=e.strerror or e)
            return
        finally:
            os.close(read_end)
            os.close(null)
        os.set_blocking(write_end, False)
        self._guard_fd = write_end
        # A restarted guard must know what the last one knew.
        for run in list(self.active.values()) + list(self.lingering.values()):
            self._tell(f"run {run.cookie}")
            if run.pid is not None:
                self._tell(f"pid {run.cookie} {run.pid} {run.start or 0}")
        for pid, (start, _) in self.orphans.items():
            self._tell(f"adopt {pid} {start or 0}")

    def _tell(self, line: str) -> None:
        # A raw write, not a Twisted transport: the line must be in the pipe before the command
        # starts, even if the slave is killed the next instant. The guard reads at once; should
        # the pipe ever be full the line is dropped rather than block the reactor.
        if self._guard_fd is None:
            return
        try:
            os.write(self._guard_fd, (line + "\n").encode("ascii"))
        except BlockingIOError:
            log.warn("the guard process is not reading; dropped: {line}", line=line)
        except OSError:
            pass  # the guard died: _guard_ended restarts it and replays

    def _close_guard(self) -> None:
        fd, self._guard_fd = self._guard_fd, None
        if fd is not None:
            os.close(fd)

    def _guard_ended(self, reason) -> None:
        self._guard = None
        if self._stopping:
            return
        log.warn("the guard process exited ({why}); starting another",
                 why=reason.getErrorMessage())
        self._close_guard()
        self.reactor.callLater(GUARD_RESTART_DELAY, self._restart_guard)

    def _restart_guard(self) -> None:
        if not self._stopping and self._guard is None:
            self._start_guard([])


def _cookie_entry(cookie: str) -> str:
    return f"{COOKIE_VAR}={cookie}"


def _cwd_within(pid: int, workdir: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == workdir or cwd.startswith(workdir.rstrip("/") + "/")
