"""The suite's parallel set-up works with the installed pytest and pytest-xdist, and from any shell.

`make test` relies on `--dist loadgroup` honouring the groups tests/conftest.py gives modules
with module-scoped fixtures. pytest 9.2 with pytest-xdist 3.8 silently stops grouping
(pytest-dev/pytest-xdist#1386); this test notices such an upgrade.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SHARED = '''
import pytest

@pytest.fixture(scope="module")
def shared():
    return object()

def test_one(shared): pass
def test_two(shared): pass
def test_three(shared): pass
def test_four(shared): pass
'''

FREE = "".join(f"def test_free_{n}(): pass\n" for n in range(4))

_LINE = re.compile(r"\[(gw\d+)\].*?(test_\w+\.py)::(\w+)(@\S+)?")


def test_a_module_with_a_module_fixture_runs_on_one_worker_as_one_group(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "test_free.py").write_text(FREE)
    r = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = [m.groups() for m in _LINE.finditer(r.stdout)]
    shared = [(worker, group) for worker, module, _, group in runs if module == "test_shared.py"]
    free = [group for _, module, _, group in runs if module == "test_free.py"]
    assert len(shared) == 4 and len(free) == 4, r.stdout[-3000:]
    assert {group for _, group in shared} == {"@test_shared"}, "the module is one xdist group"
    assert len({worker for worker, _ in shared}) == 1, "and runs on one worker"
    assert free == [None] * 4, "tests without a module fixture are scheduled one by one"


CHILD_SIGINT = '''
import subprocess, sys

def test_a_child_gets_sigint_back():
    probe = "import signal; print(signal.getsignal(signal.SIGINT))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60).stdout
    assert "default_int_handler" in out, out
'''


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_suite_started_with_sigint_ignored_still_gives_its_children_sigint(tmp_path):
    # As `make test &` or a CI runner starts it; the Ctrl-C tests need their children to see it.
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_child.py").write_text(CHILD_SIGINT)
    for workers in ("0", "1"):
        r = subprocess.run([sys.executable, "-m", "pytest", "-n", workers, "-q", "-p",
                            "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           preexec_fn=_ignore_sigint)
        assert r.returncode == 0, f"-n {workers}:\n" + r.stdout[-3000:] + r.stderr[-3000:]
