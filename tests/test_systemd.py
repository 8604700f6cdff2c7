"""systemd: the example units verify, Type=notify works over a real $NOTIFY_SOCKET, and the
signals do what the README says (SIGTERM stops cleanly; SIGHUP reloads master.toml, never
kills the master)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.buildfarm import Farm, master_toml
from tests.support import BBX, Proc

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def localised(unit: Path, tmp_path: Path) -> Path:
    """The unit with its paths pointing at this checkout, so that verify finds them."""
    text = unit.read_text().replace("/opt/bbx/.venv/bin/bbx", BBX)
    text = text.replace("/srv/bbx/master", str(tmp_path)).replace("/srv/bbx/slaves/%i", str(tmp_path))
    name = unit.name.replace("@.", "@x.")
    out = tmp_path / name
    out.write_text(text)
    return out


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["bbx-master.service", "bbx-slave@.service"])
def test_example_units_pass_systemd_analyze_verify(unit, tmp_path):
    result = verify(localised(UNITS / unit, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in (UNITS / unit).read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_would_catch_a_broken_unit(tmp_path):
    broken = localised(UNITS / "bbx-master.service", tmp_path)
    broken.write_text(broken.read_text().replace("Type=notify", "Type=notifyy"))
    result = verify(broken)
    assert result.returncode != 0 or "notifyy" in result.stderr


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield path, sock
    sock.close()


def messages_until(sock, wanted: str) -> list[str]:
    seen = []
    while not any(wanted in m for m in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_master_says_ready_once_listening_and_stopping_on_sigterm(tmp_path, notify_socket):
    path, sock = notify_socket
    farm = Farm(tmp_path, master_toml(""))
    proc = Proc([BBX, "master", "start", farm.dir], env={"NOTIFY_SOCKET": str(path)},
                log_path=tmp_path / "out.txt")
    try:
        ready = messages_until(sock, "READY=1")
        assert (farm.dir / "master.endpoint").exists()  # READY came after listening
        assert any("STATUS=listening on tcp:host=127.0.0.1" in m for m in ready)
        os.kill(proc.pid, signal.SIGHUP)  # reloads master.toml, never fatal
        proc.wait_for_output("reconfiguration finished: no changes", 20)
        assert proc.popen.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        messages_until(sock, "STOPPING=1")
        assert proc.popen.wait(20) == 0
    finally:
        proc.terminate()
    assert "master stopped" in proc.output() and not (farm.dir / "master.pid").exists()


def test_slave_says_ready_and_reports_its_connection_state(tmp_path, notify_socket):
    path, sock = notify_socket
    d = tmp_path / "slave"
    from tests.support import run_bbx

    assert run_bbx("slave", "create", d, "127.0.0.1:1", "w", "pw").returncode == 0
    proc = Proc([BBX, "slave", "start", d], env={"NOTIFY_SOCKET": str(path)},
                log_path=tmp_path / "out.txt")
    try:
        seen = messages_until(sock, "READY=1")
        seen += messages_until(sock, "refused")
        assert any(m.startswith("STATUS=disconnected") for m in seen), seen
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.popen.wait(20) == 0
    finally:
        proc.terminate()


def test_notify_is_silent_outside_systemd():
    from bbx import systemd

    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "/nonexistent/sock"}) is False
