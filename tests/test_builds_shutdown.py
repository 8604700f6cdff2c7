"""A slave's graceful shutdown (docs/protocol.md §4.5) waits for its whole build, not only the step."""

from __future__ import annotations

import signal

from tests.buildfarm import Farm, master_toml, stored_log
from tests.support import run_bbx, wait_until

BUILDERS = '''
[[builders]]
name = "two"
slaves = ["s1"]
[[builders.steps]]
name = "wait"
command = "echo started; while [ ! -e ../release ]; do sleep 0.05; done"
[[builders.steps]]
name = "second"
command = ["echo", "second step ran"]
'''


def test_graceful_shutdown_waits_for_the_running_build_and_takes_no_new_one(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        run_bbx("slave", "create", tmp_path / "s1", f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                "--allow-shutdown", "signal")
        slave = farm.start_slave("s1")
        assert farm.bbx("build", "two", "--no-wait").returncode == 0
        build = farm.wait_build(lambda b: b["state"] == "running", what="the build to start")
        wait_until(lambda: "started" in stored_log(farm.db, build["id"]), 20, what="step 1")

        slave.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "asked to shut down" in farm.master.output(), 20,
                   what="the master to hear the shutdown request")
        assert farm.bbx("build", "two", "--no-wait").returncode == 0  # must not go to s1
        (tmp_path / "s1" / "two" / "release").touch()

        done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"], 30,
                               what="the first build to end")
        assert done["result_name"] == "success"
        assert "second step ran" in stored_log(farm.db, build["id"])
        slave.popen.wait(20)
        assert [b["id"] for b in farm.builds()] == [build["id"]]
        assert len(farm.queued()) == 1
    finally:
        farm.stop()
