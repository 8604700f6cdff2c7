"""A build with shell and transfer steps on a real buildbot-worker 4.3 (worker-era names,
workersrc / workerdest, its own blocksizes)."""

from __future__ import annotations

import json
import os

from tests.buildfarm import Farm, master_toml
from tests.realworker import Worker

STEPS = '''
[[builders]]
name = "w1"
slaves = ["w1"]
[[builders.steps]]
download = { src = "payload.bin", dest = "got.bin" }
[[builders.steps]]
name = "size"
command = ["wc", "-c", "got.bin"]
[[builders.steps]]
upload = { src = "got.bin", dest = "back.bin" }
[[builders.steps]]
name = "fails"
command = "exit 4"
'''


def test_a_build_runs_its_steps_and_transfers_on_a_real_buildbot_worker(tmp_path):
    farm = Farm(tmp_path, master_toml(STEPS, slaves=(("w1", 1),)))
    worker = None
    try:
        farm.start_master()
        worker = Worker(tmp_path / "worker", farm.port, "w1", "pw-w1")
        assert worker.start().returncode == 0, worker.log()[-2000:]
        payload = os.urandom(1024 * 1024 + 3)
        (farm.dir / "payload.bin").write_bytes(payload)
        result = farm.bbx("build", "w1", "--json")
        lines = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
        steps = [(e["name"], e["result_name"]) for e in lines if e.get("event") == "stepFinished"]
        assert steps == [("download", "success"), ("size", "success"), ("upload", "success"),
                         ("fails", "failure")], result.stdout[-3000:]
        assert result.returncode == 1
        assert f"{len(payload)} got.bin" in "".join(e.get("stdout", "") for e in lines)
        assert (farm.dir / "back.bin").read_bytes() == payload
        # buildbot-worker answers print with None: its clock offset is unknown, not zero.
        ping = farm.bbx("ping", "w1")
        assert ping.returncode == 0 and "offset unknown" in ping.stdout
        assert json.loads(farm.bbx("ping", "w1", "--json").stdout)["slave_offset"] is None
    finally:
        if worker is not None:
            worker.stop()
        farm.stop()


SECRET_STEPS = '''
[[builders]]
name = "w1"
slaves = ["w1"]
[[builders.steps]]
name = "env"
command = ["true"]
env = { DEPLOY_API_TOKEN = "hunter2-not-for-eyes" }
'''


def test_bbx_log_masks_secrets_a_real_worker_put_in_its_environment_header(tmp_path):
    # buildbot-worker logs the command's whole environment in clear; the master masks it
    # before the store (issue 8, case 5), so not even --show-secrets can bring it back.
    farm = Farm(tmp_path, master_toml(SECRET_STEPS, slaves=(("w1", 1),)))
    worker = None
    try:
        farm.start_master()
        worker = Worker(tmp_path / "worker", farm.port, "w1", "pw-w1")
        assert worker.start().returncode == 0, worker.log()[-2000:]
        built = farm.bbx("build", "w1", "--json")
        assert built.returncode == 0, built.stdout[-2000:]
        build_id = json.loads(built.stdout.splitlines()[0])["build_id"]
        masked = farm.bbx("log", str(build_id))
        assert "DEPLOY_API_TOKEN=" in masked.stdout
        assert "hunter2-not-for-eyes" not in masked.stdout
        assert "hunter2-not-for-eyes" not in farm.bbx("log", str(build_id), "--json").stdout
        shown = farm.bbx("log", str(build_id), "--show-secrets")
        assert "DEPLOY_API_TOKEN=<redacted>" in shown.stdout
        assert "hunter2-not-for-eyes" not in shown.stdout
    finally:
        if worker is not None:
            worker.stop()
        farm.stop()
