"""One kill of a command's process tree: which signals, in what order, and what they hit.

The plan is Buildbot's (docs/protocol.md §6): with `sigtermTime`, SIGTERM to the whole tree, then
`interruptSignal` (default KILL) to what is left after sigtermTime; without it,
`interruptSignal` at once. Where the worker then gives up on a process that ignored a signal
other than KILL, we send SIGKILL after KILL_GRACE, or after bbx's own `sigkillTime` when the
master sent one (docs/protocol.md §6.1). A second interrupt during a grace hurries the kill to
SIGKILL at once. No Twisted here: RunProcess keeps the time.
"""

from __future__ import annotations

import signal

from bbx.slave.shellargs import signal_name

# docs/protocol.md §6: how long a killed process may take to die before the worker gives up,
# reports "SIG<X> failed to kill process" with a fake rc -1 and fails the command.
BACKUP_TIMEOUT = 5.0

# After a signal other than KILL that was the last one Buildbot would send, how long the tree
# has before SIGKILL: Buildbot's own time for a kill to take (BACKUP_TIMEOUT). Where the worker
# gives up and leaves the process running, we kill it.
KILL_GRACE = BACKUP_TIMEOUT

# How many killed processes the header names before it says "and N more".
NAMED_IN_HEADER = 10


class TreeKill:
    """The signals still to send (each with the grace that follows it) and what they hit.

    Every process gets each signal at most once: a second SIGTERM can land while a handler is
    already exiting (Python resets handlers at shutdown) and turn a clean exit into a kill.
    """

    def __init__(self, sigterm_time: float | None, interrupt_signal: int,
                 sigkill_time: float | None = None) -> None:
        self.sigterm_time = sigterm_time
        self.interrupt_signal = interrupt_signal
        self.kill_grace = KILL_GRACE if sigkill_time is None else sigkill_time
        self.stages: list[tuple[int, float]] = []
        self.started = False
        self.last_signal = signal.SIGKILL
        self.signalled: dict[int, set[int]] = {}  # signal -> pids that got it
        self.victims: dict[int, str] = {}  # pid -> what it ran

    def start(self) -> None:
        """Plan the stages; the grace after the last one is BACKUP_TIMEOUT."""
        self.started = True
        if self.sigterm_time is not None:
            self.stages = [(signal.SIGTERM, self.sigterm_time),
                           (self.interrupt_signal, self.kill_grace)]
        else:
            self.stages = [(self.interrupt_signal, self.kill_grace)]
        if self.stages[-1][0] != signal.SIGKILL:
            self.stages.append((signal.SIGKILL, BACKUP_TIMEOUT))

    @property
    def pending(self) -> bool:
        """Whether a later stage is still to come (the tree is within a grace)."""
        return bool(self.stages)

    def hurry(self) -> None:
        """Skip what is left of the grace: the next stage is SIGKILL (then BACKUP_TIMEOUT)."""
        self.stages = [(signal.SIGKILL, BACKUP_TIMEOUT)]

    def next_stage(self) -> tuple[int, float]:
        return self.stages.pop(0)

    def abandon(self) -> None:
        """The tree is gone: no further signal."""
        self.stages.clear()

    def send(self, tree, sig: int, *, include_root: bool, root: int | None) -> dict[int, str]:
        """Signal `tree` (a ProcessTree) with `sig`; remember who got it."""
        self.last_signal = sig
        done = self.signalled.setdefault(sig, set())
        hit = tree.signal(sig, include_root=include_root, skip=done)
        done.update(hit)
        for pid, what in hit.items():
            if pid != root and (what or pid not in self.victims):
                self.victims[pid] = what  # the latest: a process may have exec'd since
        return hit

    def escalation_header(self, sig: int) -> str:
        return f"{signal_name(self.last_signal)} did not stop everything; sending {signal_name(sig)}\n"

    def report(self) -> str | None:
        """The header naming what was killed beyond the command itself (once), or None."""
        victims, self.victims = self.victims, {}
        if not victims:
            return None
        items = [f"{pid} ({what})" if what else str(pid) for pid, what in sorted(victims.items())]
        more = len(items) - NAMED_IN_HEADER
        noun = "process" if len(items) == 1 else "processes"
        return (f"killed {len(items)} more {noun} besides the command itself: "
                + ", ".join(items[:NAMED_IN_HEADER]) + (f" and {more} more" if more > 0 else "") + "\n")
