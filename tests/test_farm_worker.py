"""Tags and drain with a real buildbot-worker 4.3: it offers tags through an info/tags file
(docs/protocol.md §3.1), and a drain stops its process through Bot.shutdown (§4.5, §4.7)."""

from __future__ import annotations

import json

from tests.buildfarm import Farm, master_toml
from tests.realworker import Worker
from tests.support import wait_until

BUILDERS = '''
[[builders]]
name = "dock"
slaves = { tags = ["linux", "docker"] }
[[builders.steps]]
command = "echo on-the-worker"
'''


def test_a_real_worker_offers_tags_from_info_tags_and_a_drain_stops_it(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS, slaves=(("w1", 1),)))
    worker = None
    try:
        farm.start_master()
        worker = Worker(tmp_path / "worker", farm.port, "w1", "pw-w1")
        (tmp_path / "worker" / "info" / "tags").write_text("linux docker\n")
        assert worker.start().returncode == 0, worker.log()[-2000:]
        rows = {s["name"]: s for s in json.loads(farm.bbx("slaves", "--json").stdout)}
        assert rows["w1"]["tags"] == ["linux", "docker"] and rows["w1"]["builders"] == ["dock"]
        built = farm.bbx("build", "dock")
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr
        assert "on-the-worker" in built.stdout

        drained = farm.bbx("slave", "drain", "w1")
        assert drained.returncode == 0, drained.stderr
        wait_until(lambda: not worker.alive(), 30, what="the worker process to exit")
        wait_until(lambda: json.loads(farm.bbx("slaves", "--json").stdout)[0]["state"]
                   == "paused", 20, what="w1 to be detached and paused")
    finally:
        if worker is not None:
            worker.stop()
        farm.stop()
