"""A CLI that stops answering the master's calls is dropped after a deadline (bbx/master/clients.py).

A stalled `bbx run` (SIGSTOP, a terminal frozen by Ctrl-S) must not hold the command it watches
for ever: its connection is closed and the command goes on, as when the CLI disconnects.
"""

from __future__ import annotations

from twisted.internet import defer, task

from bbx.master.clients import ANSWER_DEADLINE, ClientRef


class _Transport:
    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class _Broker:
    def __init__(self):
        self.transport = _Transport()


class _StalledRef:
    """A remote reference whose peer never answers; disconnect watchers run on abort."""

    def __init__(self):
        self.broker = _Broker()
        self.pending: list[defer.Deferred] = []
        self.watchers = []

    def notifyOnDisconnect(self, cb):
        self.watchers.append(cb)

    def callRemote(self, method, *args):
        d = defer.Deferred()
        self.pending.append(d)
        return d


def test_a_client_silent_past_the_deadline_is_cut_off_and_counts_as_gone():
    clock = task.Clock()
    ref = _StalledRef()
    gone = []
    client = ClientRef(ref, "watching client", on_gone=lambda: gone.append(True), clock=clock)
    d = client.call("update", [])
    clock.advance(ANSWER_DEADLINE - 1)
    assert not ref.broker.transport.aborted and not client.gone
    clock.advance(2)
    assert ref.broker.transport.aborted and client.gone
    # Later calls cost nothing; the pending one ends when the connection does.
    assert client.call("update", []) is None
    assert len(ref.pending) == 1
    results = []
    d.addBoth(results.append)
    assert results == []  # still waiting on the broker to report the closed connection


def test_an_answer_in_time_cancels_the_deadline():
    clock = task.Clock()
    ref = _StalledRef()
    client = ClientRef(ref, "watching client", clock=clock)
    d = client.call("update", [])
    clock.advance(ANSWER_DEADLINE / 2)
    ref.pending[0].callback(0)
    assert d.called and not clock.getDelayedCalls()
    clock.advance(ANSWER_DEADLINE * 2)
    assert not ref.broker.transport.aborted and not client.gone
