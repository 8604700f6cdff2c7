"""Several real bbx masters on one real PostgreSQL database, and real slaves, for the tests.

    farm = MultiFarm(tmp_path, pg_url, builders_toml, masters=("a", "b"))
    farm.start_master("a"); farm.start_master("b")
    farm.start_slave("s1", ["a"]); farm.start_slave("s2", ["b", "a"])   # tried in that order
    farm.bbx("a", "build", "b1", "--no-wait")
    farm.close()
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.support import BBX, Proc, run_bbx, wait_until

PASSWORD = "admin-pw"


def master_toml(name: str, db: str, builders: str, *, slaves=("s1", "s2"),
                heartbeat_timeout: float = 30) -> str:
    out = ["[master]", f'name = "{name}"', 'listen = "tcp:0:interface=127.0.0.1"',
           f'db = "{db}"', f"heartbeat_timeout = {heartbeat_timeout}", ""]
    for slave in slaves:
        out += ["[[slaves]]", f'name = "{slave}"', f'password = "pw-{slave}"', ""]
    out += ["[control]", f'users = [{{ name = "admin", password = "{PASSWORD}" }}]', "",
            builders]
    return "\n".join(out)


class MultiFarm:
    """Master directories root/<name> sharing `db`, slave directories root/<slave>; close()
    stops everything."""

    def __init__(self, root: Path, db: str, builders: str, *, masters=("a", "b"),
                 slaves=("s1", "s2"), heartbeat_timeout: float = 30):
        self.root = Path(root)
        self.db = db
        self.dirs: dict[str, Path] = {}
        self.masters: dict[str, Proc] = {}
        self.slaves: dict[str, Proc] = {}
        self._outs = 0
        for name in masters:
            d = self.root / f"master-{name}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "master.toml").write_text(master_toml(name, db, builders, slaves=slaves,
                                                       heartbeat_timeout=heartbeat_timeout))
            os.chmod(d / "master.toml", 0o600)
            self.dirs[name] = d

    def _out(self, what: str) -> Path:
        self._outs += 1
        return self.root / f"{what}-{self._outs}.out"

    def start_master(self, name: str) -> Proc:
        proc = Proc([BBX, "master", "start", self.dirs[name]], log_path=self._out(f"master-{name}"))
        self.masters[name] = proc
        proc.wait_for_output("listening on", timeout=60)
        return proc

    def port(self, name: str) -> int:
        return int((self.dirs[name] / "master.endpoint").read_text().strip().rsplit("=", 1)[1])

    def start_slave(self, slave: str, masters, *, attached_to: str | None = None) -> Proc:
        """Create (once) and start slave `slave` whose masters are tried in the given order;
        wait until master `attached_to` (default: the first) reports it attached."""
        basedir = self.root / slave
        if not (basedir / "slave.toml").exists():
            args = []
            for master in masters:
                args += ["--master", f"127.0.0.1:{self.port(master)}"]
            made = run_bbx("slave", "create", basedir, *args, slave, f"pw-{slave}",
                           "--maxdelay", "2", "--keepalive", "2", "--keepalive-timeout", "6")
            assert made.returncode == 0, made.stderr
        proc = Proc([BBX, "slave", "start", basedir], log_path=self._out(slave))
        self.slaves[slave] = proc
        where = attached_to or masters[0]
        wait_until(lambda: slave in self.attached(where), 30, what=f"{slave} attached to {where}")
        return proc

    def bbx(self, master: str, *args, timeout: float = 60.0):
        return run_bbx(*args, env={"BBX_MASTER_DIR": str(self.dirs[master])}, timeout=timeout)

    def cli(self, master: str, *args, name: str = "cli") -> Proc:
        return Proc([BBX, *args], log_path=self._out(name),
                    env={"COLUMNS": "200", "NO_COLOR": "1",
                         "BBX_MASTER_DIR": str(self.dirs[master])})

    def json(self, master: str, *args):
        result = self.bbx(master, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def attached(self, master: str) -> list[str]:
        result = self.bbx(master, "slaves", "--json")
        if result.returncode != 0:
            return []
        return [s["name"] for s in json.loads(result.stdout) if s["connected"]]

    def builds(self, master: str) -> list[dict]:
        return self.json(master, "builds", "--limit", "200")["builds"]

    def kill_master(self, name: str) -> None:
        proc = self.masters[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait(10)

    def close(self) -> None:
        for proc in self.slaves.values():
            proc.terminate()
        for proc in self.masters.values():
            proc.terminate()
