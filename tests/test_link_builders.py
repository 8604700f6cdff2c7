"""`SlaveLink.set_builder_list` called again on a live connection (what a reconfiguration does),
against each real peer: a buildslave 0.8.14, a bbx slave and a buildbot-worker 4.3.

The adapter runs alone behind a PB port (tests/link_driver.py). After the first list [a, b],
a command runs on builder a; the second list [b, c] must add c on the slave (its directory,
a command running in it, a ping) and remove a (the slave stops a's running command).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers08 import BuildSlave08, slave08_install  # noqa: F401 (fixture)
from tests.realworker import Worker
from tests.support import BBX, Proc, run_bbx, wait_until

NAME = "link1"
PASSWORD = "pw-link"
DRIVER = str(Path(__file__).resolve().parent / "link_driver.py")
PEERS = ["buildslave-0.8.14", "bbx-slave", "buildbot-worker-4.3"]


class Driver:
    """tests/link_driver.py as a child: one JSON request per line in, JSON lines out."""

    def __init__(self, log_path: Path):
        self.popen = subprocess.Popen([sys.executable, DRIVER, NAME, PASSWORD],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(log_path, "wb"), start_new_session=True)
        self.lines: list[dict] = []
        self._buffer = b""
        self._n = 0
        self.port = self.wait(lambda m: "port" in m, 20)["port"]

    def _read(self, timeout: float) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return
        chunk = os.read(self.popen.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"the link driver exited ({self.popen.poll()})")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines += [json.loads(line) for line in lines if line.strip()]

    def wait(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.lines:
                if predicate(message):
                    self.lines.remove(message)
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message from the link driver in {timeout}s; "
                                     f"have {self.lines}")
            self._read(min(left, 0.5))

    def ask(self, op: str, timeout: float = 30.0, **request) -> dict:
        self._n += 1
        n = self._n
        self.popen.stdin.write((json.dumps({"n": n, "op": op, **request}) + "\n").encode())
        self.popen.stdin.flush()
        answer = self.wait(lambda m: m.get("reply") == n, timeout)
        assert "error" not in answer, answer
        return answer

    def stop(self) -> None:
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start_peer(kind: str, tmp_path: Path, port: int, install):
    """Start one real slave of `kind` at `port`; returns (basedir, stop)."""
    basedir = tmp_path / "slave"
    if kind == "buildslave-0.8.14":
        slave = BuildSlave08(install, basedir, f"127.0.0.1:{port}", NAME, PASSWORD).start()
        return basedir, slave.stop
    if kind == "bbx-slave":
        made = run_bbx("slave", "create", basedir, f"127.0.0.1:{port}", NAME, PASSWORD)
        assert made.returncode == 0, made.stderr
        proc = Proc([BBX, "slave", "start", basedir], log_path=tmp_path / "slave.out")
        return basedir, proc.terminate
    worker = Worker(basedir, port, NAME, PASSWORD)
    proc = worker.start_foreground()
    return basedir, proc.terminate


@pytest.fixture
def peer_install(request):
    """The 0.8 install only for the 0.8 peer, so the others run where Python 2.7 does not."""
    if request.node.callspec.params["kind"] == "buildslave-0.8.14":
        return request.getfixturevalue("slave08_install")
    return None


@pytest.mark.parametrize("kind", PEERS)
def test_a_second_builder_list_adds_and_removes_builders_on_the_live_slave(kind, tmp_path,
                                                                           peer_install):
    driver = Driver(tmp_path / "driver.log")
    stop = None
    pid = None
    try:
        basedir, stop = start_peer(kind, tmp_path, driver.port, peer_install)
        attached = driver.wait(lambda m: m.get("event") == "attached", 30)
        assert attached["dialect"] == ("slave" if kind == "buildslave-0.8.14" else "worker")

        assert driver.ask("set_builder_list", wanted=[["a", "a"], ["b", "b"]])["builders"] == ["a", "b"]
        assert (basedir / "a").is_dir() and (basedir / "b").is_dir()
        pidfile = tmp_path / "a.pid"
        driver.ask("run", builder="a", command=f"echo $$ > {pidfile}; exec sleep 600")
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20,
                             what="the command on builder a"))
        assert alive(pid)

        assert driver.ask("set_builder_list", wanted=[["b", "b"], ["c", "c"]])["builders"] == ["b", "c"]
        assert (basedir / "c").is_dir()
        wait_until(lambda: not alive(pid), 15, what="builder a's command to be stopped")
        started = driver.ask("run", builder="c", command="pwd")["started"]
        done = driver.wait(lambda m: m.get("event") == "complete" and m["id"] == started, 30)
        assert done["rc"] == 0 and done["stdout"].strip().endswith("/c/build"), done
        assert driver.ask("ping", builder="c")["rtt"] >= 0
    finally:
        if stop is not None:
            stop()
        driver.stop()
        if pid is not None and alive(pid):
            os.kill(pid, 9)
