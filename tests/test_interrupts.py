"""Kills with a grace, piece by piece: bbx's model said in Buildbot's shell arguments
(bbx/pb/interrupts.py), the step keys in master.toml, the slave's kill plan, and the master's
line of waiting `bbx run`s (its notices to a stalled CLI have a deadline)."""

from __future__ import annotations

import signal

import pytest
from twisted.internet import defer, task

from bbx.master import runwait
from bbx.master.build import shell_args
from bbx.pb.interrupts import BadSignal, buildbot_kill_args, kill_after, signal_name
from bbx.slave.treekill import BACKUP_TIMEOUT, KILL_GRACE, TreeKill
from tests.test_build_config import config, error


@pytest.mark.parametrize("first, grace, args", [
    ("TERM", 10.0, {"sigtermTime": 10.0, "interruptSignal": "KILL"}),
    ("SIGTERM", 0.0, {"sigtermTime": None, "interruptSignal": "KILL"}),
    ("kill", 10.0, {"sigtermTime": None, "interruptSignal": "KILL"}),
    ("INT", 3.0, {"sigtermTime": None, "interruptSignal": "INT", "sigkillTime": 3.0}),
    (1, 2.0, {"sigtermTime": None, "interruptSignal": "HUP", "sigkillTime": 2.0}),
])
def test_bbx_interrupts_are_said_in_buildbot_arguments(first, grace, args):
    assert buildbot_kill_args(first, grace) == args


def test_bad_signals_and_graces_are_refused():
    with pytest.raises(BadSignal):
        signal_name("NOPE")
    for bad in (-1, float("nan"), float("inf"), "x", 10 ** 9):
        with pytest.raises(ValueError):
            kill_after(bad)


def test_shell_args_default_to_term_then_kill_after_10_seconds():
    args = shell_args(["make"], None, {}, None, None)
    assert (args["sigtermTime"], args["interruptSignal"]) == (10.0, "KILL")


def test_step_keys_set_the_signal_and_the_grace():
    [default] = config('[[builders.steps]]\ncommand = "x"\n').builders[0].steps
    assert (default.interrupt_signal, default.sigterm_time) == ("TERM", 10.0)
    [step] = config('[[builders.steps]]\ncommand = "x"\ninterruptSignal = "SIGINT"\n'
                    'sigtermTime = 0\n').builders[0].steps
    assert (step.interrupt_signal, step.sigterm_time) == ("INT", 0.0)


@pytest.mark.parametrize("line, text", [
    ('interruptSignal = "NOPE"', "is not a signal name"),
    ("interruptSignal = 9", "is not a signal name"),
    ("sigtermTime = -1", "must be seconds from 0"),
    ("sigtermTime = true", "must be seconds from 0"),
])
def test_bad_step_interrupt_keys_name_line_key_and_fix(line, text):
    message = error(f'[[builders.steps]]\ncommand = "x"\n{line}\n')
    assert ":13:" in message and text in message and "steps[0]" in message


def test_the_slave_plan_keeps_buildbots_meaning_and_takes_bbxs_sigkill_time():
    buildbot = TreeKill(5.0, signal.SIGKILL)
    buildbot.start()
    assert buildbot.stages == [(signal.SIGTERM, 5.0), (signal.SIGKILL, KILL_GRACE)]
    other = TreeKill(None, signal.SIGINT, sigkill_time=2.0)
    other.start()
    assert other.stages == [(signal.SIGINT, 2.0), (signal.SIGKILL, BACKUP_TIMEOUT)]
    worker_default = TreeKill(None, signal.SIGINT)
    worker_default.start()
    assert worker_default.stages[0] == (signal.SIGINT, KILL_GRACE)


def test_a_second_interrupt_hurries_the_plan_to_sigkill():
    plan = TreeKill(3600.0, signal.SIGKILL)
    plan.start()
    plan.next_stage()  # SIGTERM sent; an hour of grace to go
    plan.hurry()
    assert plan.next_stage() == (signal.SIGKILL, BACKUP_TIMEOUT) and not plan.pending


class _Builder:
    def __init__(self, free=None):
        self.free = free

    def free_slave_builder(self):
        return self.free

    def attached(self):
        return ["s1"]


class _Queue:
    def __init__(self, builders, reactor):
        self.builders, self.reactor = builders, reactor


class _StalledClient:
    """A CLI that never answers (suspended with Ctrl-Z, say)."""

    def __init__(self):
        self.calls = []

    def callRemote(self, method, info):
        self.calls.append((method, dict(info)))
        return defer.Deferred()


def test_waiting_runs_start_in_arrival_order_and_a_stalled_cli_costs_one_call():
    clock = task.Clock()
    builder = _Builder()
    waiters = runwait.RunWaiters(_Queue({"b": builder}, clock))
    stalled, other = _StalledClient(), _StalledClient()
    started = []

    def start(name):
        def take(sb):
            builder.free = None  # the build reserves the slave builder at once
            started.append((name, sb))
            return name
        return take
    first = runwait.RunWaiter("b", start("first"), other)
    second = runwait.RunWaiter("b", start("second"), stalled)
    waiters.add(first)
    waiters.add(second)
    assert stalled.calls == [("waiting", {"builder": "b", "position": 2, "busy": ["s1"]})]
    builder.free = "sb1"
    waiters.serve()
    assert started == [("first", "sb1")] and first.done.result == "first"
    # Position 1 now, but the stalled client has not answered its first notice: no second call
    # piles up until the deadline passes; then the latest position is sent.
    assert len(stalled.calls) == 1
    clock.advance(runwait.NOTICE_DEADLINE + 1)
    assert stalled.calls[-1] == ("waiting", {"builder": "b", "position": 1, "busy": ["s1"]})
    waiters.remove(second)
    assert waiters.waiting == []


def test_a_waiter_whose_builder_was_removed_fails():
    clock = task.Clock()
    queue = _Queue({"b": _Builder()}, clock)
    waiters = runwait.RunWaiters(queue)
    waiter = runwait.RunWaiter("b", lambda sb: None)
    waiters.add(waiter)
    queue.builders = {}  # a reconfig swapped the builders
    waiters.serve()
    failures = []
    waiter.done.addErrback(failures.append)
    assert failures and "was removed" in failures[0].getErrorMessage()
