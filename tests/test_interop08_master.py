"""A bbx slave under a real buildmaster 0.8.14 (Python 2.7, tests/peers08.py): shell steps with
both streams in the master's log, FAILURE, FileDownload / FileUpload intact, DirectoryUpload,
and the slave staying attached throughout."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.peers08 import BuildMaster08, master08_install  # noqa: F401 (fixture)
from tests.support import BBX, Proc, run_bbx, wait_until

SLAVE = "bbx08"
PASSWORD = "pw-bbx08"
LOGGED_IN = "attached to the master at"  # the bbx slave's line once its login is done


@pytest.fixture(scope="module")
def farm(tmp_path_factory, master08_install):
    root = tmp_path_factory.mktemp("interop08-master")
    payload = os.urandom(700 * 1024 + 3)  # many 16 KiB blocks, and not a multiple of one
    master = BuildMaster08(master08_install, root / "m", slave=SLAVE, password=PASSWORD,
                           payload=payload)
    slave = None
    try:
        master.start()
        made = run_bbx("slave", "create", root / "s", master.address, SLAVE, PASSWORD)
        assert made.returncode == 0, made.stderr
        slave = Proc([BBX, "slave", "start", root / "s"], log_path=root / "slave.out")
        slave.wait_for_output(LOGGED_IN, 30)
        master.wait_log(f"slave '{SLAVE}' attaching from")
        yield master, slave, root / "s"
    finally:
        if slave is not None:
            slave.terminate()
        master.stop()


def test_the_master_attaches_the_slave_with_the_0_8_sequence(farm):
    master, slave, _ = farm
    # 0.8 masters call getSlaveInfo, setMaster and the builder's print (docs/protocol.md §4.3).
    wait_until(lambda: "message from master: attached" in slave.output(), 20,
               what="the slave to hear 'attached'")
    for builder in ("b-shell", "b-fail", "b-files"):
        wait_until(lambda: f"builder {builder}: message from master: attached" in slave.output(),
                   20, what=f"builder {builder} attached")


def test_a_shell_step_succeeds_with_stdout_and_stderr_in_the_masters_log(farm):
    master, _, _ = farm
    build = master.build("b-shell")
    assert build["result"] == "SUCCESS"
    log = master.step_log("b-shell", build["number"], "both")
    assert "to-stdout\n" in log["stdout"] and "to-stderr\n" in log["stderr"]
    assert "program finished with exit code 0" in log["header"]


def test_a_failing_step_makes_the_build_fail(farm):
    master, _, _ = farm
    build = master.build("b-fail")
    assert build["result"] == "FAILURE"
    log = master.step_log("b-fail", build["number"], "exit3")
    assert "failing\n" in log["stderr"] and "program finished with exit code 3" in log["header"]


def test_file_download_upload_and_directory_upload_move_files_intact(farm):
    master, _, _ = farm
    build = master.build("b-files")
    assert build["result"] == "SUCCESS"
    digest = hashlib.sha256(master.payload).hexdigest()
    assert master.step_log("b-files", build["number"], "sum")["stdout"].startswith(digest)
    assert (master.basedir / "uploaded.bin").read_bytes() == master.payload
    assert (master.basedir / "uploaded-dir" / "sub" / "b.txt").read_text() == "dir-ok\n"


def test_the_slave_stays_attached_through_the_builds(farm):
    master, slave, _ = farm
    master.build("b-shell")
    out = slave.output()
    assert out.count(LOGGED_IN) == 1, "no reconnect"
    assert "retrying" not in out and "lost the connection" not in out
    assert slave.popen.poll() is None
    log = master.log()
    assert log.count(f"slave '{SLAVE}' attaching from") == 1
    assert "BuildSlave.detached" not in log
