"""CPU per command of fork+exec vs posix_spawn from a Python process of a given heap size.

    .venv/bin/python bench/spawn_cost.py [--mb 0,30,60] [--runs 100]

The bbx slave forks itself for every command (bbx/slave/spawn.py: the child must setsid,
chdir, set PR_SET_PDEATHSIG and join its cgroup before exec). A fork copies the parent's page
tables, and each page either side writes before the exec is copied, so the cost grows with
the parent's size. This prints, for each heap size added to a process that has imported
Twisted (as the slave has), the CPU seconds (parent + reaped child) per `true` run both ways.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fork_exec(path: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.execv(path, [path])
        finally:
            os._exit(127)
    return pid


def spawn(path: str) -> int:
    return os.posix_spawn(path, [path], os.environ, setsid=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", default="0,30,60", help="heap sizes to add, comma-separated")
    parser.add_argument("--runs", type=int, default=100)
    options = parser.parse_args()
    import twisted.internet.reactor  # noqa: F401  (the slave's baseline size)

    true = shutil.which("true") or "/bin/true"
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ballast = []
    for mb in (int(x) for x in options.mb.split(",")):
        ballast = [bytes(1000) for _ in range(mb * 1000)]
        for name, start in (("fork+exec", fork_exec), ("posix_spawn", spawn)):
            before = cpu()
            for _ in range(options.runs):
                os.waitpid(start(true), 0)
            per = (cpu() - before) / options.runs * 1000
            print(f"+{mb:>3} MB heap  {name:<12} {per:6.2f} ms CPU per command (parent + child)")
    del ballast
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
