"""A pause on one master of a shared PostgreSQL store holds on the others (docs/protocol.md
§4.7): real masters, a real slave, a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

from tests.pgfarm import MultiFarm
from tests.support import wait_until

BUILDERS = """
[[builders]]
name = "one"
slaves = ["s1"]
[[builders.steps]]
command = ["echo", "ran"]
"""


def _state(farm: MultiFarm, master: str, slave: str = "s1") -> str:
    return {s["name"]: s for s in farm.json(master, "slaves")}[slave]["state"]


def test_a_pause_through_one_master_holds_the_slave_attached_to_another(tmp_path, pg_url):
    farm = MultiFarm(tmp_path, pg_url, BUILDERS, slaves=("s1",))
    try:
        farm.start_master("a")
        farm.start_master("b")
        farm.start_slave("s1", ["b"])
        paused = farm.bbx("a", "slave", "pause", "s1")
        assert paused.returncode == 0, paused.stderr
        # Master b hears it (LISTEN/NOTIFY) and gives s1 nothing.
        wait_until(lambda: _state(farm, "b") == "paused", 20, what="b to hear the pause")
        assert farm.bbx("a", "build", "one", "--no-wait").returncode == 0
        wait_until(lambda: farm.json("a", "builds")["queued"], 10, what="the request queued")
        assert farm.builds("a") == []

        resumed = farm.bbx("a", "slave", "resume", "s1")
        assert resumed.returncode == 0, resumed.stderr
        wait_until(lambda: [b for b in farm.builds("a") if b["finished_at"]], 30,
                   what="the build to run on s1 through b")
        assert _state(farm, "b") == "idle"
    finally:
        farm.close()
