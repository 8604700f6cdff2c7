"""A real bbx master (with steps in master.toml) and real bbx slaves, for the build tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

from tests.support import BBX, Proc, run_bbx, wait_until

PASSWORD = "admin-pw"


def master_toml(builders: str, *, slaves=(("s1", 1),), master_extra: str = "") -> str:
    """A master.toml listening on port 0 with the given [[builders]] text appended."""
    out = ["[master]", 'listen = "tcp:0:interface=127.0.0.1"', master_extra, ""]
    for name, max_builds in slaves:
        out += ["[[slaves]]", f'name = "{name}"', f'password = "pw-{name}"',
                f"max_builds = {max_builds}", ""]
    out += ["[control]", f'users = [{{ name = "admin", password = "{PASSWORD}" }}]', "", builders]
    return "\n".join(out)


class Farm:
    """One master directory plus slave directories under `root`; everything is stopped by
    close()."""

    def __init__(self, root: Path, toml: str):
        self.root = Path(root)
        self.dir = self.root / "m"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "master.toml").write_text(toml)
        os.chmod(self.dir / "master.toml", 0o600)
        self.master: Proc | None = None
        self.slaves: dict[str, Proc] = {}
        self.starts = 0

    @property
    def db(self) -> Path:
        return self.dir / "bbx.sqlite"

    def start_master(self) -> Proc:
        self.starts += 1
        self.master = Proc([BBX, "master", "start", self.dir],
                           log_path=self.root / f"master-{self.starts}.out")
        self.master.wait_for_output("listening on", timeout=30)
        return self.master

    @property
    def port(self) -> int:
        return int((self.dir / "master.endpoint").read_text().strip().rsplit("=", 1)[1])

    def start_slave(self, name: str = "s1", *, attached: bool = True) -> Proc:
        basedir = self.root / name
        if not (basedir / "slave.toml").exists():
            made = run_bbx("slave", "create", basedir, f"127.0.0.1:{self.port}", name,
                           f"pw-{name}", "--maxdelay", "1")
            assert made.returncode == 0, made.stderr
        else:  # the master restarted on another port
            text = (basedir / "slave.toml").read_text()
            import re
            text = re.sub(r"port=\d+", f"port={self.port}", text)
            (basedir / "slave.toml").write_text(text)
        log = self.root / f"{name}-{len(list(self.root.glob(name + '-*.out')))}.out"
        proc = Proc([BBX, "slave", "start", basedir], log_path=log)
        self.slaves[name] = proc
        if attached:
            proc.wait_for_output("message from master: attached", timeout=30)
            wait_until(lambda: name in self.attached(), 20, what=f"{name} attached")
        return proc

    def attached(self) -> list[str]:
        result = self.bbx("slaves", "--json")
        if result.returncode != 0:
            return []
        return [s["name"] for s in json.loads(result.stdout) if s["connected"]]

    def bbx(self, *args, timeout: float = 60.0):
        return run_bbx(*args, env={"BBX_MASTER_DIR": str(self.dir)}, timeout=timeout)

    def cli(self, *args, name: str = "cli") -> Proc:
        """A long-running bbx command as a child (stdout+stderr in a file)."""
        log = self.root / f"{name}-{len(list(self.root.glob(name + '-*.out')))}.out"
        return Proc([BBX, *args], log_path=log,
                    env={"COLUMNS": "200", "NO_COLOR": "1", "BBX_MASTER_DIR": str(self.dir)})

    def builds(self) -> list[dict]:
        result = self.bbx("builds", "--json", "--limit", "100")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["builds"]

    def queued(self) -> list[dict]:
        result = self.bbx("builds", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["queued"]

    def wait_build(self, predicate, timeout: float = 30.0, what: str = "a build"):
        def found():
            for build in self.builds():
                if predicate(build):
                    return build
            return None
        return wait_until(found, timeout, interval=0.1, what=what)

    def stop(self) -> None:
        for proc in self.slaves.values():
            proc.terminate()
        if self.master is not None:
            self.master.terminate()

    def kill_slave(self, name: str = "s1") -> None:
        """SIGKILL the slave and everything it started (its process group)."""
        proc = self.slaves[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait(10)


def running_farm(directory: Path, toml: str, *slaves: str):
    """A Farm in `directory` with its master and `slaves` (default s1) started, for module
    fixtures (`yield from running_farm(...)`): yields the farm, then stops it."""
    farm = Farm(directory, toml)
    try:
        farm.start_master()
        for name in slaves or ("s1",):
            farm.start_slave(name)
        yield farm
    finally:
        farm.stop()


def stored_log(db: Path, build_id: int, stream: str | None = None) -> str:
    """A build's log straight from the SQLite file, in order."""
    conn = sqlite3.connect(db)
    try:
        query = ("SELECT l.data FROM logs l JOIN steps s ON l.step_id = s.id WHERE s.build_id = ?"
                 + (" AND l.stream = ?" if stream else "") + " ORDER BY l.seq")
        args = (build_id, stream) if stream else (build_id,)
        return b"".join(bytes(r[0]) for r in conn.execute(query, args)).decode("utf-8", "replace")
    finally:
        conn.close()


def build_row(db: Path, build_id: int) -> dict:
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM builds WHERE id = ?", (build_id,)).fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()
