"""A real buildbot-worker 4.3.0 attaching to `bbx master`: login, info, ping, liveness, duplicates."""

from __future__ import annotations

import os
import signal

import pytest

from tests.realworker import Master, Worker, admin, control, make_master
from tests.support import file_contains, wait_until


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """One master with slaves w1 (attached, a real worker) and w2 (never attached)."""
    tmp = tmp_path_factory.mktemp("farm")
    make_master(tmp / "m", slaves=("w1:pw1", "w2:pw2"))
    master = Master(tmp / "m")
    worker = Worker(tmp / "w1", master.port, "w1", "pw1")
    try:
        result = worker.start()
        assert result.returncode == 0, result.stdout + worker.log()[-2000:]
        yield master, worker
    finally:
        worker.stop()
        master.stop()


def call(master, method, *args):
    return control(master.endpoint, *admin(master.config), method, *args)


def test_worker_start_succeeds_because_the_master_says_attached(farm):
    master, worker = farm
    assert "message from master: attached" in worker.log()
    master.wait_log("slave w1 attached from 127.0.0.1:")


def test_info_reports_what_the_worker_said_about_itself(farm):
    master, _ = farm
    answer = call(master, "info", "w1")["result"]
    assert answer["name"] == "w1" and answer["dialect"] == "worker"
    assert answer["peer"].startswith("127.0.0.1:")
    assert answer["info"]["version"] == "4.3.0"
    assert answer["info"]["worker_commands"]["shell"] == "3.3"
    assert answer["info"]["basedir"].endswith("w1")


def test_info_without_a_name_picks_the_only_attached_slave(farm):
    master, _ = farm
    assert call(master, "info", None)["result"]["name"] == "w1"


def test_info_on_an_unknown_slave_names_the_configured_ones(farm):
    master, _ = farm
    answer = call(master, "info", "nope")
    assert answer["error"] == "bbx.pb.control.UnknownSlave" and "w1, w2" in answer["message"]


def test_info_on_a_detached_slave_says_it_is_not_attached(farm):
    master, _ = farm
    answer = call(master, "info", "w2")
    assert answer["error"] == "bbx.pb.control.NoSlaveAttached"


def test_slaves_lists_every_configured_slave_with_its_state(farm):
    master, _ = farm
    rows = {row["name"]: row for row in call(master, "slaves")["result"]}
    assert rows["w1"]["connected"] and rows["w1"]["version"] == "4.3.0"
    assert rows["w1"]["dialect"] == "worker" and rows["w1"]["builders"] == ["w1"]
    assert rows["w1"]["last_message"] >= rows["w1"]["connected_since"]
    assert not rows["w2"]["connected"] and rows["w2"]["peer"] is None


def test_builders_lists_attached_slaves(farm):
    master, _ = farm
    rows = {row["name"]: row for row in call(master, "builders")["result"]}
    assert rows["w1"] == {"name": "w1", "slaves": ["w1"], "tags": [], "builddir": "w1",
                          "attached": ["w1"], "usable": ["w1"]}
    assert rows["w2"]["attached"] == []


def test_ping_of_the_workers_builder_gives_round_trip_times(farm):
    master, _ = farm
    answer = call(master, "ping", "w1", 3)["result"]
    assert answer["builder"] == "w1" and answer["slave"] == "w1"
    assert len(answer["rtts"]) == 3 and all(0 <= rtt < 5 for rtt in answer["rtts"])


def test_ping_of_a_builder_without_attached_slave_fails_clearly(farm):
    master, _ = farm
    answer = call(master, "ping", "w2")
    assert answer["error"] == "bbx.pb.control.NoSlaveAttached" and "w2" in answer["message"]


def test_a_slave_cannot_log_in_as_a_control_user(farm):
    master, _ = farm
    answer = control(master.endpoint, "w1", "pw1", "slaves")
    assert "result" not in answer and answer["error"] == "LoginFailed"
    master.wait_log("refused login as 'w1': a slave name used without a Bot")


def test_wrong_password_is_refused_and_logged_with_name_and_peer_but_not_the_password(tmp_path):
    make_master(tmp_path / "m")
    master = Master(tmp_path / "m")
    worker = Worker(tmp_path / "w", master.port, "w1", "not-the-Password-42")
    proc = worker.start_foreground()
    try:
        master.wait_log("refused login as 'w1' from 127.0.0.1:")
        wait_until(lambda: file_contains(worker.log_path, "unauthorized login"), 20,
                   what="the worker to report the refusal")
        assert proc.popen.poll() is None  # a refused worker retries, it does not exit (§2.3)
        assert "not-the-Password-42" not in master.log()
        assert "not-the-Password-42" not in (tmp_path / "m" / "master.log").read_text()
    finally:
        proc.terminate()
        master.stop()


def test_a_silent_worker_is_declared_gone_after_keepalive_timeout(tmp_path):
    make_master(tmp_path / "m", keepalive=(1, 3))
    master = Master(tmp_path / "m")
    worker = Worker(tmp_path / "w", master.port, "w1", "pw1")
    try:
        assert worker.start().returncode == 0
        master.wait_log("slave w1 attached")
        os.kill(worker.pid, signal.SIGSTOP)
        master.wait_log("slave w1 silent for", timeout=15)
        master.wait_log("slave w1 detached", timeout=5)
        rows = control(master.endpoint, *admin(master.config), "slaves")["result"]
        assert rows[0]["connected"] is False
    finally:
        worker.stop()
        master.stop()


def test_an_answering_worker_is_not_declared_gone(tmp_path):
    make_master(tmp_path / "m", keepalive=(1, 3))
    master = Master(tmp_path / "m")
    worker = Worker(tmp_path / "w", master.port, "w1", "pw1")
    try:
        assert worker.start().returncode == 0
        master.wait_log("slave w1 attached")
        # Six timeouts' worth of master keepalives, each answered by the worker.
        wait_until(lambda: worker.log().count("message from master: keepalive") >= 6, 20,
                   what="six keepalives")
        assert "silent for" not in master.log() and "detached" not in master.log()
    finally:
        worker.stop()
        master.stop()


def test_duplicate_name_keeps_the_live_old_worker_and_the_new_one_exits(tmp_path):
    make_master(tmp_path / "m")
    master = Master(tmp_path / "m")
    old = Worker(tmp_path / "old", master.port, "w1", "pw1")
    new = Worker(tmp_path / "new", master.port, "w1", "pw1")
    proc = None
    try:
        assert old.start().returncode == 0
        proc = new.start_foreground()
        assert proc.popen.wait(30) is not None
        assert "rejecting duplicate slave" in new.log()
        assert "message from master: master got a duplicate connection" in old.log()
        master.wait_log("is alive; rejecting the new one")
        assert old.alive()
        answer = control(master.endpoint, *admin(master.config), "ping", "w1")
        assert "result" in answer
    finally:
        if proc:
            proc.terminate()
        old.stop()
        master.stop()


def test_duplicate_name_replaces_an_old_worker_that_does_not_answer(tmp_path):
    make_master(tmp_path / "m")
    master = Master(tmp_path / "m")
    old = Worker(tmp_path / "old", master.port, "w1", "pw1")
    new = Worker(tmp_path / "new", master.port, "w1", "pw1")
    proc = None
    try:
        assert old.start().returncode == 0
        os.kill(old.pid, signal.SIGSTOP)
        proc = new.start_foreground()
        # The old one gets 10 s to answer (docs/protocol.md §2.4).
        wait_until(lambda: file_contains(new.log_path, "message from master: attached"), 30,
                   what="the new worker to be attached")
        master.wait_log("did not answer; dropping it")
        info = control(master.endpoint, *admin(master.config), "info", "w1")["result"]
        assert info["info"]["basedir"] == str(tmp_path / "new")
    finally:
        if proc:
            proc.terminate()
        old.stop()
        master.stop()


def test_worker_stop_detaches_it(tmp_path):
    make_master(tmp_path / "m")
    master = Master(tmp_path / "m")
    worker = Worker(tmp_path / "w", master.port, "w1", "pw1")
    try:
        assert worker.start().returncode == 0
        master.wait_log("slave w1 attached")
        worker.stop()
        master.wait_log("slave w1 detached")
    finally:
        worker.stop()
        master.stop()


# -- the same rules with the clock driven by the test (no network) --------------------------------

class _FakeTransport:
    def __init__(self):
        self.aborted = False

    def getPeer(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "10.0.0.9", 4242)

    def abortConnection(self):
        self.aborted = True


class _FakeBroker:
    def __init__(self):
        self.transport = _FakeTransport()
        self.last_received = None
        self.disconnected = False

    def notifyOnDisconnect(self, callback):
        pass


class _SilentMind:
    """A Bot whose calls never answer."""

    def __init__(self):
        self.calls = []

    def callRemote(self, name, *args, **kwargs):
        from twisted.internet import defer

        self.calls.append((name, args, kwargs))
        return defer.Deferred()


def _clocked_slave(tmp_path):
    from twisted.internet import task

    from bbx.master.builder import Builder, SlaveBuilder
    from bbx.master.config import load_config
    from bbx.master.link import SlaveLink
    from bbx.master.slave import SlavePerspective
    from bbx.pb.dialect import Dialect

    make_master(tmp_path, keepalive=(10, 30))
    config = load_config(tmp_path)
    clock = task.Clock()
    builders = {b.name: Builder(b) for b in config.builders}
    slave = SlavePerspective(config.slaves[0], config, builders, clock)
    link = SlaveLink(_FakeBroker(), _SilentMind(), clock, slave="w1")
    link.dialect = Dialect.WORKER
    link.slave_builders["w1"] = SlaveBuilder(builders["w1"], slave, link, clock)
    slave._accept(link)
    return clock, slave, link


def test_silence_as_long_as_keepalive_timeout_drops_the_slave_on_the_clock(tmp_path):
    clock, slave, link = _clocked_slave(tmp_path)
    clock.pump([5] * 5 + [4.9])  # 29.9 s: not yet the timeout
    assert slave.link is link and not link.broker.transport.aborted
    assert sum(1 for c in link.mind.calls if c[0] == "print") == 2  # keepalives every 10 s
    clock.advance(0.1)  # 30 s of silence: gone at once, not at the next periodic check
    assert slave.link is None and link.broker.transport.aborted
    assert not link.slave_builders["w1"].builder.attached()


def test_a_slave_sending_anything_stays_attached_on_the_clock(tmp_path):
    clock, slave, link = _clocked_slave(tmp_path)
    for _ in range(40):
        clock.advance(5)
        link.broker.last_received = clock.seconds()
    assert slave.link is link and not link.broker.transport.aborted


def test_ping_without_answer_fails_after_10_seconds_on_the_clock(tmp_path):
    from bbx.pb.control import SlaveTimeout

    clock, slave, link = _clocked_slave(tmp_path)
    d = link.slave_builders["w1"].ping()
    failures = []
    d.addErrback(failures.append)
    clock.advance(9.9)
    assert not failures
    clock.advance(0.2)
    assert failures and failures[0].check(SlaveTimeout)
