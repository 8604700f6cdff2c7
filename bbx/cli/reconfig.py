"""`bbx master reconfig DIR`: SIGHUP the master in DIR and report how its reconfiguration ended.

The master answers in DIR/master.reconfig (bbx/master/reconfig.py: pid, serial, ok, line),
rewritten after each reconfiguration; the CLI waits for a record newer than the one it saw
before signalling, so it never reads the master's log.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .errors import BbxError, Unreachable, UsageError

# How often the state file is looked at while waiting.
POLL = 0.05


def _record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _serial(record: dict | None, pid: int) -> int:
    if record is None or record.get("pid") != pid or not isinstance(record.get("serial"), int):
        return 0
    return record["serial"]


def reconfig(directory: Path, timeout: float) -> None:
    from bbx import pidfile
    from bbx.master.reconfig import STATE_FILE
    from bbx.master.service import ENDPOINT_FILE, PID_FILE

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; give the master's directory")
    pid = pidfile.running(directory / PID_FILE)
    if pid is None:
        raise BbxError(f"no master is running in {directory}; start it with "
                       f"`bbx master start {directory}` (it reads master.toml as it starts)")
    if not (directory / ENDPOINT_FILE).exists():
        # Until it listens, a SIGHUP could arrive before its handler is installed.
        raise Unreachable(f"the master in {directory} (pid {pid}) is still starting; try again "
                          "once `bbx master status` says it listens")
    state = directory / STATE_FILE
    before = _serial(_record(state), pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise BbxError(f"not allowed to signal the master in {directory}; run as its user") from None
    except ProcessLookupError:
        raise BbxError(f"the master in {directory} (pid {pid}) has just exited") from None
    deadline = time.monotonic() + timeout
    while True:
        record = _record(state)
        if _serial(record, pid) > before:
            break
        if not pidfile.alive(pid):
            raise BbxError(f"the master (pid {pid}) exited during the reconfiguration; see its log")
        if time.monotonic() > deadline:
            raise Unreachable(f"the master (pid {pid}) did not report its reconfiguration within "
                              f"{timeout:g} s; see its log in {directory}")
        time.sleep(POLL)
    line = str(record.get("line", ""))
    if not record.get("ok"):
        raise UsageError(line)
    print(line)
