"""The master's file-descriptor budget: one socket per attached slave, plus its own files.

A master with 10,000 configured slaves holds 10,000 sockets once they are all attached, and
the usual soft limit (1024) would make accept(2) fail with EMFILE long before that. The soft
limit can be raised up to the hard one without privileges, so the master does that at start,
only as far as it needs; beyond the hard limit it says how to raise it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Descriptors besides the slaves' sockets: the listening ports, the store (SQLite and its
# -wal/-shm, or PostgreSQL connections), the log, the reactor's own, control clients
# (`bbx ping`, `bbx run`, ...) and connections not logged in yet (bbx/master/gate.py allows
# 128). 512 leaves room for all of them with slack.
FD_MARGIN = 512


@dataclass(frozen=True)
class FdBudget:
    """What the master needs and has: `needed` descriptors, the soft and hard limits after
    the raise (None where the platform has no RLIMIT_NOFILE), and whether it was raised."""

    needed: int
    soft: int | None
    hard: int | None
    raised_from: int | None = None

    @property
    def enough(self) -> bool:
        return self.soft is None or self.soft >= self.needed

    def problem(self) -> str | None:
        """The one log line when the limit is still too low, else None."""
        if self.enough:
            return None
        return (f"the open-file limit is {self.soft} (hard limit {self.hard}) but "
                f"{self.needed} slaves and files may be open at once; slaves beyond it cannot "
                f"connect: raise the hard limit (ulimit -Hn, LimitNOFILE= in the systemd unit, "
                f"nofile in /etc/security/limits.conf) to at least {self.needed}")


def needed_for(slaves: int) -> int:
    """Descriptors a master with `slaves` configured slaves may hold at once."""
    return slaves + FD_MARGIN


def raise_nofile(needed: int, resource_module=None) -> FdBudget:
    """Raise RLIMIT_NOFILE's soft limit towards the hard limit until it covers `needed`
    (never lowers it); return the budget as it stands afterwards."""
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:  # not POSIX
            return FdBudget(needed, None, None)
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    infinity = resource_module.RLIM_INFINITY
    if soft == infinity or soft >= needed:
        return FdBudget(needed, None if soft == infinity else soft,
                        None if hard == infinity else hard)
    target = needed if hard == infinity else min(needed, hard)
    try:
        resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return FdBudget(needed, soft, None if hard == infinity else hard)
    return FdBudget(needed, target, None if hard == infinity else hard, raised_from=soft)
