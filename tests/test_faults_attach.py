"""A peer that logs in with a slave's name and password and then stalls the attach sequence:
the master drops it after the attach deadline, says so in its log, and the real slave of that
name attaches (issue 8, case 4)."""

from __future__ import annotations

import sys

from tests.realworker import Master, __file__ as realworker, make_master
from tests.support import BBX, Proc, run_bbx

# The master's per-call attach deadline for this test (bbx/master/link.py ATTACH_CALL_TIMEOUT,
# read from BBX_ATTACH_TIMEOUT), short so the test does not wait the real 20 s.
ATTACH_TIMEOUT = 2


def test_a_stalled_attach_is_dropped_and_the_real_slave_then_attaches(tmp_path):
    make_master(tmp_path / "m", slaves=("s1:pw1",))
    master = Master(tmp_path / "m", env={"BBX_ATTACH_TIMEOUT": str(ATTACH_TIMEOUT)})
    stall = slave = None
    try:
        stall = Proc([sys.executable, realworker, "stall", master.endpoint, "s1", "pw1"],
                     log_path=tmp_path / "stall.out")
        stall.wait_for_output("print received")
        # The real slave logs in while the stalled peer holds the name: it waits behind it.
        made = run_bbx("slave", "create", tmp_path / "s1", f"127.0.0.1:{master.port}", "s1", "pw1",
                       "--maxdelay", "1")
        assert made.returncode == 0, made.stderr
        slave = Proc([BBX, "slave", "start", tmp_path / "s1"], log_path=tmp_path / "s1.out")
        master.wait_log("slave s1 from 127.0.0.1:", timeout=ATTACH_TIMEOUT + 10)
        master.wait_log("stalled while attaching (slave s1 did not answer print within 2 s); "
                        "dropping it", timeout=5)
        stall.wait_for_output("login ended:", timeout=10)
        assert "attached (unexpected)" not in stall.output()
        slave.wait_for_output("attached to the master at", timeout=ATTACH_TIMEOUT + 20)
        master.wait_log("slave s1 attached from 127.0.0.1:", timeout=5)
        log = master.log()
        assert log.index("stalled while attaching") < log.index("slave s1 attached from")
        assert "Traceback" not in log
    finally:
        for proc in (slave, stall):
            if proc is not None:
                proc.terminate()
        master.stop()


def test_a_master_that_never_answers_the_login_is_given_up_after_the_login_deadline(tmp_path):
    import socket
    import subprocess

    # A "master" whose kernel accepts the TCP connection but which never speaks PB.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        out = subprocess.run([sys.executable, realworker, "login",
                              f"tcp:host=127.0.0.1:port={silent.getsockname()[1]}", "s1", "pw1",
                              "1"], capture_output=True, text=True, timeout=30)
    finally:
        silent.close()
    assert "login ended: login: tcp:host=127.0.0.1" in out.stdout, out
    assert "accepted the connection but did not answer the PB login within 1 s" in out.stdout
