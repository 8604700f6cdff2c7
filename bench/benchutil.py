"""What the benchmark scripts share (they run as `python bench/NAME.py`, so this directory is on
sys.path). Benchmarks stop with one line, not a traceback, when what they wait for never comes."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
