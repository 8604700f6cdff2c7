"""BuildQueue in process, with task.Clock: the real queue, builder and Build; a fake store and slave.

These pin down what the queue does between reactor turns, which the farm tests (real
processes) cannot count.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer, task

from bbx.master.builder import Builder, SlaveLoad
from bbx.master.buildqueue import BuildQueue
from bbx.master.config import BuilderConfig, MasterConfig, SlaveConfig, StepConfig
from bbx.master.store import StoreError


class FullStore:
    """A store whose disk is full: every start_build fails, as SQLITE_FULL does.

    After `give_up_after` attempts it stops the queue, so a queue that retries without
    pause ends the test instead of spinning in Clock.advance forever."""

    def __init__(self, give_up_after: int = 20):
        self.start_attempts = 0
        self.give_up_after = give_up_after
        self.queue = None

    def start_build(self, request_id, builder, slave, first_step=None):
        self.start_attempts += 1
        if self.start_attempts >= self.give_up_after:
            self.queue.stop()
        return defer.fail(StoreError("store: cannot write to bbx.sqlite: database or disk is full"))


class IdleSlave:
    name = "s1"
    shutting_down = False
    takes_work = True
    operator_state = "active"
    link = None


class AnsweringLink:
    """The slave's side of startBuild: answered at once."""

    def start_build(self, builder):
        return defer.succeed(None)


class AnsweringSlaveBuilder:
    """A SlaveBuilder whose slave answers every ping (and startBuild) at once."""

    def __init__(self, builder):
        self.builder = builder
        self.name = builder.name
        self.link = AnsweringLink()
        self.slave = IdleSlave()
        self.command = None
        self.build = None
        self.detached = False

    @property
    def busy(self):
        return self.command is not None or self.build is not None

    def ping(self):
        return defer.succeed(0.001)


def one_queued_request(clock, store) -> BuildQueue:
    """A queue with one builder "b", request 1 queued for it, and an idle slave attached."""
    step = StepConfig(name="true", kind="shell", command=("true",))
    builder_config = BuilderConfig("b", ("s1",), "b", (step,))
    config = MasterConfig(path=Path("/m/master.toml"), listen="tcp:0", keepalive_interval=60.0,
                          keepalive_timeout=180.0, log="master.log",
                          slaves=(SlaveConfig("s1", "pw"),), builders=(builder_config,))
    load = SlaveLoad({"s1": 1})
    builders = {"b": Builder(builder_config, load)}
    queue = BuildQueue(config, builders, load, store, clock, "/m")
    store.queue = queue
    queue.requests.append({"id": 1, "builder": "b", "submitted_at": 0.0, "reason": "",
                           "retries": 0})
    builders["b"].attach(AnsweringSlaveBuilder(builders["b"]))
    return queue


def test_a_store_that_cannot_record_builds_is_not_retried_on_every_reactor_turn():
    clock = task.Clock()
    store = FullStore()
    one_queued_request(clock, store)

    clock.advance(0)

    # No time passes, and the disk stays full: one attempt (or a few) is right; a retry on
    # every reactor turn is a busy loop logging a traceback each time (here: until the
    # store's give-up stops the queue).
    assert store.start_attempts <= 3


def test_a_request_held_after_a_failed_start_is_tried_again_once_the_hold_ends():
    from bbx.master.buildqueue import RETRY_HOLD_FIRST

    clock = task.Clock()
    store = FullStore(give_up_after=1000)
    queue = one_queued_request(clock, store)
    clock.advance(0)
    first = store.start_attempts
    clock.advance(RETRY_HOLD_FIRST)
    assert store.start_attempts == first + 1
    assert [r["id"] for r in queue.requests] == [1]
