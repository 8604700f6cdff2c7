"""A storm of 300 slaves against a real `bbx master` child: all attach, `bbx ping` keeps
answering throughout, and after the master is killed and restarted all of them come back.

The swarm is tests/swarm.py (minimal worker-era PB slaves, one reactor, each from its own
127.1.x.y address); bench/swarm.py measures the same at up to 10,000 slaves.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading

from tests.support import BBX, Proc
from tests.swarm import SwarmProcesses, write_farm

N = 300
# Deadlines against hangs, not speed claims: 300 attach in about a second on an idle machine,
# and the storm after a restart within the swarm's backoff (at most 1, 2, 4, 8 s per retry).
ATTACH_DEADLINE = 60.0
PING_DEADLINE = 30.0


class Pinger:
    """`bbx ping b0` one run after another, in a thread, until stopped; every run recorded."""

    def __init__(self, master_dir):
        self.master_dir = master_dir
        self.runs: list[subprocess.CompletedProcess | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.runs.append(subprocess.run(
                    [BBX, "ping", "b0", "--json", "--master-dir", str(self.master_dir),
                     "--timeout", "10"], capture_output=True, text=True, timeout=PING_DEADLINE))
            except subprocess.TimeoutExpired:
                self.runs.append(None)

    def stop(self):
        self._stop.set()
        self._thread.join(PING_DEADLINE + 5)

    def answered(self) -> list[dict]:
        return [json.loads(r.stdout) for r in self.runs if r is not None and r.returncode == 0]

    def problems(self) -> list[str]:
        """Runs that hung, or failed for another reason than b0's slaves not being back yet."""
        out = []
        for r in self.runs:
            if r is None:
                out.append(f"a bbx ping did not exit within {PING_DEADLINE:g} s")
            elif r.returncode != 0 and "has no attached slave" not in r.stderr:
                out.append(r.stderr.strip())
        return out


def _start_master(directory, log):
    proc = Proc([BBX, "master", "start", directory], log_path=log)
    proc.wait_for_output("listening on", timeout=60)
    return proc


def test_a_storm_of_300_attaches_pings_keep_answering_and_a_restart_brings_all_back(tmp_path):
    directory = tmp_path / "m"
    write_farm(directory, N)
    master = _start_master(directory, tmp_path / "master-1.out")
    endpoint = (directory / "master.endpoint").read_text().strip()
    port = int(endpoint.rsplit("=", 1)[1])
    swarm = SwarmProcesses(endpoint, N, lifetime=300)
    pinger = Pinger(directory)
    try:
        swarm.wait(lambda s: s.attached == N, ATTACH_DEADLINE, "all 300 attached")
        swarm.wait(lambda s: pinger.answered(), PING_DEADLINE, "a ping answered")
        assert pinger.problems() == []
        assert "closing a connection" not in master.output(), "the gate cut a login off"

        # The storm: the master dies and comes back on the same port; everyone reconnects.
        text = (directory / "master.toml").read_text()
        (directory / "master.toml").write_text(re.sub(
            r"^listen = .*$", f'listen = "tcp:{port}:interface=127.0.0.1"', text, count=1,
            flags=re.M))
        logins = swarm.logins
        pinger.stop()  # while no master runs, a ping's refusal is right
        master.kill()
        master = _start_master(directory, tmp_path / "master-2.out")
        pinger = Pinger(directory)
        swarm.wait(lambda s: s.attached == N and s.logins >= logins + N, ATTACH_DEADLINE,
                   "all 300 re-attached after the restart")
        swarm.wait(lambda s: pinger.answered(), PING_DEADLINE,
                   "a ping answered by the restarted master")
        pinger.stop()
        assert pinger.problems() == []
        assert all(answer["rtts"] for answer in pinger.answered())
        assert "closing a connection" not in master.output(), "the gate cut a login off"
    finally:
        pinger.stop()
        swarm.stop()
        master.terminate()
