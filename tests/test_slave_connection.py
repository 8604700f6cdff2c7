"""The slave's connection policy: backoff (pure), and real processes against dead or silent masters."""

from __future__ import annotations

import os
import re
import socket

import pytest

from bbx.slave.connection import backoff_ceiling, full_jitter_backoff
from tests.support import Proc, file_contains, refused_port, run_bbx, BBX, wait_until

RETRY = re.compile(r"retrying in ([0-9.]+) s \(attempt (\d+), at most ([0-9.]+) s\)")


# -- the backoff policy, as a pure function -----------------------------------------------------

def test_first_retry_comes_within_two_seconds():
    policy = full_jitter_backoff(cap=300)
    assert all(policy(0) <= 2.0 for _ in range(200))


def test_backoff_ceiling_grows_exponentially_up_to_the_cap():
    ceilings = [backoff_ceiling(n, cap=60) for n in range(10)]
    assert ceilings[:6] == [1, 2, 4, 8, 16, 32]
    assert ceilings[6:] == [60] * 4
    assert backoff_ceiling(10_000, cap=300) == 300


def test_backoff_is_full_jitter_between_zero_and_the_ceiling():
    seen = []
    policy = full_jitter_backoff(cap=100, uniform=lambda lo, hi: seen.append((lo, hi)) or hi / 2)
    assert policy(3) == 4.0
    assert seen == [(0.0, 8.0)]
    real = full_jitter_backoff(cap=100)
    samples = [real(5) for _ in range(500)]
    assert min(samples) >= 0 and max(samples) <= 32
    assert min(samples) < 8 and max(samples) > 24, "delays spread over the whole range"


def test_backoff_never_exceeds_maxdelay():
    policy = full_jitter_backoff(cap=7)
    assert max(policy(n) for n in range(50) for _ in range(20)) <= 7


# -- real processes ---------------------------------------------------------------------------

def _free_port() -> int:
    # Held bound until the process ends: no parallel test's master can be given it.
    return refused_port()


def _slave(tmp_path, connection, *extra):
    d = tmp_path / "slave"
    r = run_bbx("slave", "create", d, "--connection-string", connection, "w1", "pw", *extra)
    assert r.returncode == 0, r.stderr
    return d


def test_unreachable_master_is_logged_and_retried_with_growing_delay(tmp_path):
    port = _free_port()
    d = _slave(tmp_path, f"tcp:host=127.0.0.1:port={port}", "--maxdelay", "4")
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        wait_until(lambda: len(RETRY.findall(proc.output())) >= 4, 30, what="four retries")
        assert proc.popen.poll() is None, "the slave keeps running"
        lines = [ln for ln in proc.output().splitlines() if "retrying in" in ln]
        assert all(f"cannot connect to tcp:host=127.0.0.1:port={port}: connection refused; retrying in"
                   in ln for ln in lines), lines
        found = [(float(d_), int(n), float(c)) for d_, n, c in RETRY.findall(proc.output())][:4]
        assert [n for _, n, _ in found] == [1, 2, 3, 4]
        assert [c for _, _, c in found] == [1, 2, 4, 4], "ceiling doubles, capped at maxdelay"
        assert all(0 <= delay <= ceiling for delay, _, ceiling in found)
        assert file_contains(d / "slave.log", "connection refused; retrying in")
    finally:
        proc.terminate()


def test_silent_master_is_dropped_after_the_keepalive_deadline(tmp_path):
    # A listening socket that is never accepted: TCP connects, but the "master" says nothing.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    d = _slave(tmp_path, f"tcp:host=127.0.0.1:port={port}", "--keepalive", "1",
               "--keepalive-timeout", "2", "--maxdelay", "1")
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("(deadline 2 s); dropping the connection", 20)
        assert "sent nothing for" in proc.output()
        wait_until(lambda: proc.output().count("connected to tcp:") >= 2, 20, what="a reconnect")
        assert proc.popen.poll() is None
    finally:
        proc.terminate()
        silent.close()


def test_a_connection_the_master_never_accepts_is_given_up_and_retried(tmp_path):
    # A master in a storm whose listen queue is full: the kernel completes the TCP handshake
    # of the first connection (listen(0) keeps one), nothing ever accepts it, and later SYNs
    # are dropped. The slave must give up and retry, never hang on it.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    d = _slave(tmp_path, f"tcp:host=127.0.0.1:port={port}", "--maxdelay", "1")
    env = dict(os.environ, BBX_SLAVE_GREETING_TIMEOUT="1")
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt", env=env)
    try:
        proc.wait_for_output("sent nothing within 1 s (not accepted", 30)
        wait_until(lambda: len(RETRY.findall(proc.output())) >= 2, 60, what="a second retry")
        assert proc.popen.poll() is None, "the slave keeps trying"
    finally:
        proc.terminate()
        stuck.close()


# -- the state machine on a fake reactor (time driven by hand) --------------------------------

class _Bot:
    def __init__(self):
        self.lost = []

    def connection_lost(self, why):
        self.lost.append(why)


def _refuse_latest(reactor):
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    host, port, factory, timeout, bind = reactor.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def _connection(reactor, policy):
    from bbx.slave.connection import SlaveConnection

    return SlaveConnection(reactor, "tcp:host=127.0.0.1:port=9", "w1", "pw", _Bot(), policy=policy)


def test_each_refused_connect_waits_what_the_policy_says_before_the_next():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    asked = []
    conn = _connection(reactor, lambda n: asked.append(n) or 10.0 * (n + 1))
    conn.start()
    assert len(reactor.tcpClients) == 1
    _refuse_latest(reactor)
    assert asked == [0]
    reactor.advance(9.9)
    assert len(reactor.tcpClients) == 1, "no retry before the policy's delay"
    reactor.advance(0.1)
    assert len(reactor.tcpClients) == 2
    _refuse_latest(reactor)
    assert asked == [0, 1]
    reactor.advance(20)
    assert len(reactor.tcpClients) == 3


def test_stop_cancels_a_pending_retry():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    conn = _connection(reactor, lambda n: 1.0)
    conn.start()
    _refuse_latest(reactor)
    d = conn.stop()
    assert d.called
    reactor.advance(100)
    assert len(reactor.tcpClients) == 1
