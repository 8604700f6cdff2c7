"""Benchmark interrupts: how long Ctrl-C of a real `bbx run` takes to end the command.

    .venv/bin/python bench/interrupt.py [--repeat 3] [--grace 1,3]

Starts a real `bbx master` and `bbx slave` in a temporary directory (tests/buildfarm.py), then
for each case runs `bbx run` as a child, waits for the command's first line, sends the child
SIGINT and times until it exits (the slave has killed the tree and the master has completed
the command):

- `trap-cleanup`: `trap 'echo cleanup; exit 0' TERM` — ends on the first signal;
- `ignores-term --kill-after G`: `trap '' TERM` — must last about G s, then SIGKILL;
- `ignores-term, second Ctrl-C`: a 3600 s grace cut short by a second SIGINT sent right after
  the first was acknowledged.

Prints the median and the spread of the repeats, in seconds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.buildfarm import Farm, master_toml  # noqa: E402

CLEANS_UP = "trap 'echo cleanup; exit 0' TERM; echo ready; while :; do sleep 0.1; done"
IGNORES_TERM = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
BUILDERS = '[[builders]]\nname = "one"\nslaves = ["s1"]\n'


def one(farm: Farm, command: str, options: list[str], twice: bool) -> float:
    run = farm.cli("run", "one", *options, "--shell", "--", command, name="bench")
    try:
        run.wait_for_output("ready", timeout=60)
        start = time.monotonic()
        run.popen.send_signal(signal.SIGINT)
        if twice:
            run.wait_for_output("Ctrl-C again to kill", timeout=30)
            run.popen.send_signal(signal.SIGINT)
        run.popen.wait(3700)
        return time.monotonic() - start
    finally:
        run.terminate()
        if run.log_path is not None:
            os.unlink(run.log_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--grace", default="1,3", help="comma-separated --kill-after values")
    args = parser.parse_args()
    cases = [("trap-cleanup", CLEANS_UP, [], False)]
    for grace in args.grace.split(","):
        cases.append((f"ignores-term --kill-after {grace}", IGNORES_TERM,
                      ["--kill-after", grace], False))
    cases.append(("ignores-term, second Ctrl-C", IGNORES_TERM, ["--kill-after", "3600"], True))
    with tempfile.TemporaryDirectory(prefix="bbx-bench-interrupt-") as tmp:
        farm = Farm(Path(tmp), master_toml(BUILDERS))
        try:
            farm.start_master()
            farm.start_slave()
            print(f"{'case':36} {'median s':>9} {'min s':>7} {'max s':>7}")
            for name, command, options, twice in cases:
                times = [one(farm, command, options, twice) for _ in range(args.repeat)]
                print(f"{name:36} {statistics.median(times):9.3f} {min(times):7.3f} "
                      f"{max(times):7.3f}", flush=True)
        finally:
            farm.stop()


if __name__ == "__main__":
    main()
