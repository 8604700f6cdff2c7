"""tests/cache.py: a machine-wide cache of installed things that parallel test workers share."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.cache import COMPLETE, cached_dir
from tests.support import Proc, wait_until

ROOT = Path(__file__).resolve().parent.parent

# A child that asks for key "peer": its build notes its pid in builds.log, then holds on until
# the test creates the file `release` (so the others must arrive while the build is running).
CHILD = r"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.cache import cached_dir
work = Path(sys.argv[2])

def build(target):
    with open(work / "builds.log", "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not (work / "release").exists():
        if time.monotonic() > deadline:
            raise SystemExit("never released")
        time.sleep(0.02)
    if (work / "fail").exists():
        raise RuntimeError("the install failed")
    (target / "installed.txt").write_text("ok")

print("trying", flush=True)
print("got", cached_dir("peer", build), flush=True)
"""


def _child(tmp_path: Path, n: int) -> Proc:
    return Proc([sys.executable, "-c", CHILD, str(ROOT), str(tmp_path)],
                env={"BBX_TEST_CACHE": str(tmp_path / "cache")},
                log_path=tmp_path / f"child{n}.out")


def _builds(tmp_path: Path) -> list[str]:
    try:
        return (tmp_path / "builds.log").read_text().split()
    except FileNotFoundError:
        return []


def test_parallel_callers_build_once_and_all_get_the_finished_directory(tmp_path):
    children = [_child(tmp_path, n) for n in range(3)]
    try:
        wait_until(lambda: all("trying" in c.output() for c in children) and _builds(tmp_path),
                   30, what="every child to ask and one to start building")
        (tmp_path / "release").touch()
        for c in children:
            assert c.popen.wait(60) == 0, c.output()
        assert len(_builds(tmp_path)) == 1, "exactly one child installed"
        final = tmp_path / "cache" / "peer"
        assert all(f"got {final}" in c.output() for c in children)
        assert (final / "installed.txt").read_text() == "ok" and (final / COMPLETE).exists()
    finally:
        for c in children:
            c.kill()


def test_a_later_run_reuses_the_cache_without_building(tmp_path):
    calls = []
    root = tmp_path / "cache"
    root.mkdir()
    first = cached_dir("k", lambda d: calls.append(d) or (d / "f").write_text("1"), root=root)
    second = cached_dir("k", lambda d: calls.append(d), root=root)
    assert first == second == root / "k" and len(calls) == 1 and (second / "f").read_text() == "1"


def test_a_failed_build_leaves_nothing_and_the_next_caller_builds_again(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()

    def broken(d):
        (d / "half").write_text("x")
        raise RuntimeError("pip said no")

    with pytest.raises(RuntimeError, match="pip said no"):
        cached_dir("k", broken, root=root)
    assert not (root / "k").exists()
    done = cached_dir("k", lambda d: (d / "f").write_text("2"), root=root)
    assert (done / "f").read_text() == "2" and not (done / "half").exists()


def test_a_builder_killed_half_way_releases_the_lock_and_its_half_build_is_redone(tmp_path):
    child = _child(tmp_path, 0)
    try:
        wait_until(lambda: _builds(tmp_path), 30, what="the child to start building")
        os.killpg(child.pid, signal.SIGKILL)
        child.popen.wait(10)
    finally:
        child.kill()
    half = tmp_path / "cache" / "peer"
    assert half.is_dir() and not (half / COMPLETE).exists()
    done = cached_dir("peer", lambda d: (d / "installed.txt").write_text("again"),
                      root=tmp_path / "cache")
    assert (done / "installed.txt").read_text() == "again" and (done / COMPLETE).exists()
