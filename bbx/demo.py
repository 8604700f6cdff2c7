"""`make demo`: a master and a local slave on loopback, a ping, an info, a command with live output.

Runs the real `bbx` commands an operator would type, in a scratch directory, and stops
everything it started whatever happens. Usage: python -m bbx.demo [--keep]
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BBX = [sys.executable, "-m", "bbx"]
ATTACH_DEADLINE = 30.0


def _show(argv: list[str]) -> None:
    print(f"\n$ bbx {' '.join(argv)}", flush=True)


def bbx(*argv: str, check: bool = True) -> int:
    _show(list(argv))
    rc = subprocess.call(BBX + list(argv), stdin=subprocess.DEVNULL)
    if check and rc != 0:
        raise SystemExit(f"demo: `bbx {' '.join(argv)}` exited {rc}")
    return rc


def wait_for_file(path: Path, deadline: float) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise SystemExit(f"demo: {path} did not appear within {deadline:.0f} s")


def main() -> int:
    keep = "--keep" in sys.argv
    root = Path(tempfile.mkdtemp(prefix="bbx-demo-"))
    master_dir, slave_dir = root / "master", root / "slave"
    password = secrets.token_urlsafe(12)
    started: list[tuple[str, Path]] = []
    try:
        bbx("master", "create", str(master_dir), "--listen", "tcp:0:interface=127.0.0.1",
            "--slave", f"local:{password}", "--builder", "local=local")
        bbx("master", "start", str(master_dir), "--daemon")
        started.append(("master", master_dir))
        endpoint = wait_for_file(master_dir / "master.endpoint", ATTACH_DEADLINE)
        bbx("slave", "create", str(slave_dir), "--connection-string", endpoint, "local", password)
        bbx("slave", "start", str(slave_dir), "--daemon")
        started.append(("slave", slave_dir))
        os.environ["BBX_MASTER_DIR"] = str(master_dir)
        bbx("slaves")
        bbx("doctor")
        bbx("ping", "local", "--count", "3")
        bbx("info", "local")
        bbx("run", "local", "--", "sh", "-c",
            "echo building on $(uname -n); for i in 1 2 3; do echo step $i; sleep 0.3; done; "
            "echo 'a warning on stderr' >&2; echo done")
        print("\ndemo: all good", flush=True)
        return 0
    finally:
        for role, path in reversed(started):
            bbx(role, "stop", str(path), check=False)
        if keep:
            print(f"demo: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
