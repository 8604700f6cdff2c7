"""What a reconfiguration costs the master on a large farm (not a test).

    .venv/bin/python bench/reconfig.py [--slaves 10000]

Builds a master (in this process, not listening) with --slaves configured slaves and one
builder each, then times, best of 5: loading and checking master.toml (what `checkconfig`
does), `plan()` (the diff against the running config) and the synchronous apply (the swap of
every config object, the part during which the master answers nothing else), for a new file
that adds, removes and changes 1 % of the builders. No slave is attached, so no setBuilderList
is sent: a slave's list costs one PB call to that slave alone, sent concurrently.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def toml(n: int, shift: int = 0) -> str:
    out = ['[master]', 'listen = "tcp:0:interface=127.0.0.1"', "",
           '[control]', 'users = [{ name = "admin", password = "pw" }]', ""]
    for i in range(n):
        out += ["[[slaves]]", f'name = "s{i}"', f'password = "pw{i}"', ""]
    changed = max(1, n // 100)
    for i in range(shift, n):
        command = "make check" if i < shift + changed else "make"
        out += ["[[builders]]", f'name = "b{i}"', f'slaves = ["s{i}"]', "",
                "[[builders.steps]]", f'command = "{command}"', ""]
    for i in range(n, n + shift):
        out += ["[[builders]]", f'name = "b{i}"', f'slaves = ["s{i - n}"]', ""]
    return "\n".join(out)


def best(fn, times: int = 5) -> tuple[float, object]:
    results = []
    value = None
    for _ in range(times):
        started = time.perf_counter()
        value = fn()
        results.append(time.perf_counter() - started)
    return min(results), value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slaves", type=int, default=10000)
    n = parser.parse_args().slaves

    from twisted.internet import task

    from bbx.master.config import load_config
    from bbx.master.reconfig import Reconfigurator, plan
    from bbx.master.service import MasterService

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "master.toml").write_text(toml(n))
        old = load_config(directory)
        (directory / "master.toml").write_text(toml(n, shift=max(1, n // 100)))
        load_s, new = best(lambda: load_config(directory))
        plan_s, change = best(lambda: plan(old, new))

        def apply_once():
            service = MasterService(old, directory, task.Clock())
            reconfigurator = Reconfigurator(service)
            started = time.perf_counter()
            reconfigurator._apply(change)
            return time.perf_counter() - started

        apply_s = min(apply_once() for _ in range(5))
    print(f"{n} slaves, {n} builders; {len(change.builders_added)} added, "
          f"{len(change.builders_removed)} removed, {len(change.builders_changed)} changed")
    print(f"load + check master.toml: {load_s * 1000:.0f} ms")
    print(f"plan (diff):              {plan_s * 1000:.1f} ms")
    print(f"apply (reactor blocked):  {apply_s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
