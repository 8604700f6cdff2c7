"""bbx/master/admission.py on task.Clock: a bounded number of attaches at once, the rest in order."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.spread import pb

from bbx.master.admission import AttachQueue


class Attach:
    """An attach sequence that takes `seconds` on the clock."""

    def __init__(self, clock, log):
        self.clock = clock
        self.log = log

    def __call__(self, name, seconds=1.0):
        self.log.append(("start", name, self.clock.seconds()))
        d = defer.Deferred()
        self.clock.callLater(seconds, d.callback, name)
        return d


def make(limit):
    clock = task.Clock()
    log = []
    return clock, AttachQueue(clock, limit), Attach(clock, log), log


def test_no_more_than_the_limit_run_at_once_and_the_rest_wait_in_order():
    clock, queue, attach, log = make(limit=2)
    results = [queue.run(attach, f"s{i}") for i in range(5)]
    assert [name for _, name, _ in log] == ["s0", "s1"]
    assert queue.running == 2 and queue.waiting == 3
    clock.advance(1)
    assert [name for _, name, _ in log] == ["s0", "s1", "s2", "s3"]
    clock.advance(1)
    clock.advance(1)
    assert [name for _, name, _ in log] == ["s0", "s1", "s2", "s3", "s4"]
    assert [r.result for r in results] == ["s0", "s1", "s2", "s3", "s4"]
    assert queue.running == 0 and queue.waiting == 0
    assert queue.longest_wait == 2.0


def test_a_failed_attach_frees_its_place():
    clock, queue, attach, log = make(limit=1)

    def failing(name):
        return defer.fail(RuntimeError("stalled"))

    first = queue.run(failing, "s0")
    second = queue.run(attach, "s1")
    assert first.called and isinstance(first.result.value, RuntimeError)
    first.addErrback(lambda f: None)
    assert [name for _, name, _ in log] == ["s1"]
    clock.advance(1)
    assert second.result == "s1"


def test_a_login_that_went_away_while_waiting_is_skipped_not_run():
    clock, queue, attach, log = make(limit=1)
    queue.run(attach, "s0")
    gone = queue.run(attach, "s1", wanted=lambda: False)
    kept = queue.run(attach, "s2")
    failures = []
    gone.addErrback(failures.append)
    clock.advance(1)
    assert [name for _, name, _ in log] == ["s0", "s2"]
    assert failures and failures[0].check(pb.PBConnectionLost)
    clock.advance(1)
    assert kept.result == "s2"


def test_attaches_waiting_when_the_master_stops_fail_as_lost():
    clock, queue, attach, _ = make(limit=1)
    queue.run(attach, "s0")
    waiting = queue.run(attach, "s1")
    failures = []
    waiting.addErrback(failures.append)
    queue.stop()
    assert failures and failures[0].check(pb.PBConnectionLost)
    assert queue.waiting == 0


def test_the_limit_must_leave_room_for_one():
    with pytest.raises(ValueError):
        AttachQueue(task.Clock(), 0)
