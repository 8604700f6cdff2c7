"""Things the tests install once per machine (real Buildbot peers, say), safe under pytest-xdist.

    from tests.cache import cached_dir

    def install(target: Path) -> None:      # fills an empty directory; raises on failure
        subprocess.run([PY2, "-m", "pip", "install", "--target", str(target), ...], check=True)

    slave08 = cached_dir("buildslave-0.8.14", install)   # the finished directory

The first caller on a machine builds; every later caller, in this run or the next, reuses the
result. Callers in parallel xdist workers (or in two suites run at once from two worktrees) wait
on an fcntl lock, so two never install at once, and a build that failed or was killed half-way
is never mistaken for a finished one: the directory counts only once its `.complete` mark is
written, after `build` returned.

The cache lives in $BBX_TEST_CACHE, else ~/.cache/bbx-tests. Delete a key's directory to force
a rebuild; change the key when what is installed changes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# An install from PyPI takes a minute or two here; a lock held longer than this is a hung
# installer, and waiting on for ever would hang the whole suite.
LOCK_TIMEOUT = 900.0
LOCK_POLL = 0.1
# The file whose presence marks a key's directory as complete.
COMPLETE = ".complete"


def cache_root() -> Path:
    """Where cached installs live: $BBX_TEST_CACHE, else ~/.cache/bbx-tests (made 0700)."""
    root = Path(os.environ.get("BBX_TEST_CACHE") or Path.home() / ".cache" / "bbx-tests")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if needed); give up after `timeout` s.

    The lock is released when the process dies, so a killed installer never blocks the next run.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} stayed locked for {timeout:.0f} s: another test run "
                                   "is installing; wait for it, or kill it and retry")
            time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def cached_dir(key: str, build: Callable[[Path], None], *, root: Path | None = None) -> Path:
    """The directory `root/key`, filled by `build(directory)` the first time it is asked for."""
    root = root or cache_root()
    final = root / key
    if (final / COMPLETE).exists():
        return final
    with file_lock(root / f"{key}.lock"):
        if (final / COMPLETE).exists():  # built by whoever held the lock before us
            return final
        # Built in place (pip --target trees may record their own path), and marked complete
        # last: a directory without the mark is a build that died half-way.
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(mode=0o700)
        try:
            build(final)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        (final / COMPLETE).write_text(f"built by pid {os.getpid()} at {time.ctime()}\n")
    return final
