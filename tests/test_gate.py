"""bbx/master/gate.py on task.Clock: deadlines, caps, the pace of password checks, log throttle."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from bbx.master import gate as gate_module
from bbx.master.gate import (FIRST_FAILURE_DELAY, FREE_FAILURES, MAX_FAILURE_DELAY,
                             MAX_QUEUED_CHECKS, LoginGate, LogThrottle, TooManyAttempts,
                             failure_delay)


class Conn:
    def __init__(self, host="10.0.0.1"):
        self.peer_host = host
        self.refused = None

    def refuse(self, why):
        self.refused = why


@pytest.fixture
def logged():
    lines = []

    def observer(event):
        if event.get("log_namespace") == gate_module.__name__:
            lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def make(**kw):
    clock = task.Clock()
    return clock, LoginGate(clock, **kw)


def test_a_connection_that_does_not_log_in_is_closed_at_the_deadline():
    clock, gate = make(login_timeout=30)
    conn = Conn()
    gate.connected(conn)
    clock.advance(29.9)
    assert conn.refused is None
    clock.advance(0.1)
    assert "did not log in within 30 s" in conn.refused and gate.pending == 0


def test_a_connection_that_logs_in_is_let_go():
    clock, gate = make(login_timeout=30)
    conn = Conn()
    gate.connected(conn)
    gate.authenticated(conn)
    clock.advance(1000)
    assert conn.refused is None and gate.pending == 0 and not clock.getDelayedCalls()


def test_over_the_per_host_cap_the_oldest_of_that_host_is_closed():
    _, gate = make(max_pending_per_host=3, max_pending=100)
    conns = [Conn() for _ in range(4)]
    other = Conn("10.0.0.2")
    gate.connected(other)
    for c in conns:
        gate.connected(c)
    assert [c.refused is not None for c in conns] == [True, False, False, False]
    assert other.refused is None and gate.pending == 4


def test_over_the_total_cap_the_busiest_host_loses_its_oldest():
    _, gate = make(max_pending_per_host=10, max_pending=4)
    quiet = Conn("10.0.0.2")
    gate.connected(quiet)
    busy = [Conn("10.0.0.3") for _ in range(3)]
    for c in busy:
        gate.connected(c)
    newcomer = Conn("10.0.0.4")
    gate.connected(newcomer)
    assert busy[0].refused and "busiest" in busy[0].refused
    assert quiet.refused is None and newcomer.refused is None and gate.pending == 4


def test_pre_login_bytes_over_the_budget_close_the_connection():
    _, gate = make(pre_login_bytes=100)
    conn = Conn()
    gate.connected(conn)
    assert not gate.over_budget(conn, 100)
    assert gate.over_budget(conn, 101) and "more than 100 bytes" in conn.refused


def test_failure_delays_start_after_the_free_tries_and_double_up_to_the_cap():
    delays = [failure_delay(n) for n in range(1, 12)]
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES:FREE_FAILURES + 3] == [FIRST_FAILURE_DELAY, 2 * FIRST_FAILURE_DELAY,
                                                       4 * FIRST_FAILURE_DELAY]
    assert max(delays) == MAX_FAILURE_DELAY == delays[-1]


def _checks(gate, host, outcomes):
    results = []
    for ok in outcomes:
        gate.check(host, lambda ok=ok: ok).addBoth(results.append)
    return results


def test_checks_from_one_address_wait_their_turn_after_failures():
    clock, gate = make()
    results = _checks(gate, "10.0.0.1", [False] * (FREE_FAILURES + 3))
    # The free tries and the first failure past them are answered at once...
    assert results == [False] * (FREE_FAILURES + 1)
    # ...then each waits for the delay the last failure set.
    clock.advance(FIRST_FAILURE_DELAY - 0.01)
    assert len(results) == FREE_FAILURES + 1
    clock.advance(0.01)
    assert len(results) == FREE_FAILURES + 2
    clock.advance(2 * FIRST_FAILURE_DELAY)
    assert len(results) == FREE_FAILURES + 3
    # Another address is not held back.
    assert _checks(gate, "10.0.0.2", [True]) == [True]


def test_a_right_password_resets_the_address():
    clock, gate = make()
    _checks(gate, "10.0.0.1", [False] * (FREE_FAILURES + 1))
    clock.advance(MAX_FAILURE_DELAY)
    assert _checks(gate, "10.0.0.1", [True]) == [True]
    assert gate.failures("10.0.0.1") == 0
    assert _checks(gate, "10.0.0.1", [False]) == [False]


def test_failures_are_forgotten_after_a_quiet_while():
    clock, gate = make()
    _checks(gate, "10.0.0.1", [False] * (FREE_FAILURES + 2))
    clock.pump([FIRST_FAILURE_DELAY, gate_module.FORGET_FAILURES_AFTER + 1])
    assert _checks(gate, "10.0.0.1", [False]) == [False]
    assert gate.failures("10.0.0.1") == 1


def test_too_many_waiting_checks_are_refused_at_once():
    clock, gate = make()
    _checks(gate, "10.0.0.1", [False] * (FREE_FAILURES + 1))
    waiting = _checks(gate, "10.0.0.1", [False] * MAX_QUEUED_CHECKS)
    assert waiting == []
    extra = _checks(gate, "10.0.0.1", [True])
    assert len(extra) == 1 and extra[0].check(TooManyAttempts)
    gate.stop()
    assert len(waiting) == MAX_QUEUED_CHECKS and not clock.getDelayedCalls()


def test_the_log_throttle_keeps_a_burst_then_counts(logged):
    clock = task.Clock()
    throttle = LogThrottle(clock, burst=3, window=60)
    for n in range(10):
        throttle.warn("10.0.0.1", f"line {n}")
    throttle.warn("10.0.0.2", "other host")
    assert logged == ["line 0", "line 1", "line 2", "other host"]
    clock.advance(60)
    assert len(logged) == 5 and logged[-1].startswith("7 more like these about 10.0.0.1")
    throttle.warn("10.0.0.1", "after the window")
    assert "after the window" in logged


# -- a storm: accepting paused at the cap instead of cutting honest logins off -------------------

class Port:
    def __init__(self):
        self.reading = True

    def pause(self):
        self.reading = False

    def resume(self):
        self.reading = True


def storm_gate(max_pending=8):
    clock, gate = make(max_pending_per_host=4, max_pending=max_pending)
    port = Port()
    gate.watch_port(port.pause, port.resume)
    return clock, gate, port


def test_at_the_total_cap_accepting_pauses_and_nobody_young_is_cut_off():
    clock, gate, port = storm_gate()
    conns = [Conn(f"10.1.0.{i}") for i in range(8)]
    for c in conns:
        gate.connected(c)
    assert not port.reading and gate.paused
    late = [Conn(f"10.2.0.{i}") for i in range(3)]  # the rest of one accept burst
    for c in late:
        gate.connected(c)
    assert not any(c.refused for c in conns + late)


def test_accepting_resumes_once_logins_have_made_room():
    clock, gate, port = storm_gate()
    conns = [Conn(f"10.1.0.{i}") for i in range(8)]
    for c in conns:
        gate.connected(c)
    gate.authenticated(conns[0])
    assert not port.reading, "not at the first free place: three quarters of the cap"
    for c in conns[1:3]:
        gate.authenticated(c)
    assert port.reading and not gate.paused


def test_while_paused_connections_idle_past_the_grace_are_closed_to_make_room():
    clock, gate, port = storm_gate()
    idle = [Conn(f"10.1.0.{i}") for i in range(8)]
    for c in idle:
        gate.connected(c)
    clock.advance(gate_module.STORM_GRACE)
    closed = [c for c in idle if c.refused]
    assert len(closed) == 3 and closed == idle[:3], "oldest first, down to three quarters"
    assert "while 8 connections were logging in" in closed[0].refused
    assert port.reading


def test_over_the_per_host_cap_one_address_still_loses_its_oldest_during_a_storm():
    clock, gate, port = storm_gate()
    conns = [Conn("10.9.9.9") for _ in range(5)]
    for c in conns:
        gate.connected(c)
    assert conns[0].refused and not any(c.refused for c in conns[1:])


def test_stopping_forgets_the_port():
    clock, gate, port = storm_gate()
    for i in range(8):
        gate.connected(Conn(f"10.1.0.{i}"))
    gate.stop()
    assert not gate.paused and not clock.getDelayedCalls()
