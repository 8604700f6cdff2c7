"""Making files private that an older bbx left readable by others (issue 8, secrets at rest).

Everything the roles create now is 0600 (the master's umask, O_CREAT modes), but a file that
already existed keeps its mode: a store or a rotated log written by an older master stays
0644 with every secret in it. Both roles call `tighten` at start for the files they own.
"""

from __future__ import annotations

import glob
import os
import stat
from typing import Iterable

PRIVATE_FILE = 0o600


def tighten(paths: Iterable[str | os.PathLike]) -> list[str]:
    """chmod 0600 each existing regular file among `paths` that group or others may read or
    write; returns the paths changed. Symbolic links and missing files are left alone."""
    changed = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            try:
                os.chmod(path, PRIVATE_FILE)
            except OSError:
                continue  # not ours to change (another owner): the store's own checks speak
            changed.append(str(path))
    return changed


def with_rotations(path: str | os.PathLike) -> list[str]:
    """`path` and the rotated copies a log rotation left beside it (path.1, path.2, …)."""
    path = str(path)
    return [path] + sorted(p for p in glob.glob(glob.escape(path) + ".*")
                           if p[len(path) + 1:].isdigit())


def sqlite_files(path: str | os.PathLike) -> list[str]:
    """A SQLite database and the write-ahead log and shared-memory files beside it."""
    path = str(path)
    return [path, path + "-wal", path + "-shm"]
