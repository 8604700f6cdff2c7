"""A slave-era peer whose answers no real Buildbot gives (tests/realworker.py malformed): the
adapter keeps what it can use, drops the rest, and the slave still attaches and runs commands.

The real buildslave 0.8.14 is tested in tests/test_interop08_slave.py; this covers what it
cannot be made to send."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.realworker import Master, __file__ as realworker, admin, control, make_master
from tests.support import BBX, Proc


def test_malformed_info_and_builder_lists_are_tolerated_and_bad_bytes_become_replacements(tmp_path):
    make_master(tmp_path / "m", slaves=("odd:pw",))
    master = Master(tmp_path / "m")
    peer = Proc([sys.executable, realworker, "malformed", master.endpoint, "odd", "pw"],
                log_path=tmp_path / "odd.out")
    try:
        peer.wait_for_output("logged in")
        master.wait_log("slave odd attached from 127.0.0.1:")
        out = peer.output()
        assert "setMaster odd" in out and "setMaster intruder" not in out
        info = control(master.endpoint, *admin(master.config), "info", "odd")["result"]
        assert info["dialect"] == "slave" and info["commands"] == {}
        assert info["info"]["version"] == 12345
        builders = control(master.endpoint, *admin(master.config), "builders")["result"]
        assert [b["attached"] for b in builders if b["name"] == "odd"] == [["odd"]]
        env = dict(os.environ, NO_COLOR="1", BBX_MASTER_DIR=str(master.dir))
        run = subprocess.run([BBX, "run", "odd", "--", "true"], capture_output=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout == "caf\ufffd \ufffd\n".encode()
        assert "Traceback" not in master.log()
    finally:
        peer.terminate()
        master.stop()
