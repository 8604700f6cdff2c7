"""SlaveLink (bbx/master/link.py) on a task.Clock, with peers that answer when the test says:
every call's deadline, what a stalled call does to the connection, the shutdown fallback, the
builder list on a live connection, and Python 2 text in update envelopes.

The real peers are in tests/test_link_builders.py and tests/test_interop08_*.py; here the
clock is the test's, so deadlines are checked to the second without waiting for them.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.spread import flavors, pb

from bbx.master import link as link_module
from bbx.master.link import MissingMethod, PeerTimeout, SlaveLink
from bbx.master.stepref import StepRef
from bbx.pb.control import SlaveTimeout
from bbx.pb.dialect import Dialect


class Transport:
    def __init__(self):
        self.aborted = False

    def getPeer(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 4242)

    def abortConnection(self):
        self.aborted = True


class Broker:
    def __init__(self):
        self.transport = Transport()


class Peer:
    """A remote reference whose calls are answered by `answers[method]` (a callable returning
    a value or a Deferred), and never answered when the method is not in it."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls: list[tuple] = []

    def callRemote(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        answer = self.answers.get(method)
        if answer is None:
            return defer.Deferred()
        return defer.maybeDeferred(answer, *args, **kwargs)


def no_such_method(*_args, **_kwargs):
    raise flavors.NoSuchMethod("No such method: remote_x")


def make_link(mind: Peer, dialect: Dialect = Dialect.WORKER, builders=None):
    clock = task.Clock()
    link = SlaveLink(Broker(), mind, clock, slave="s1")
    link.dialect = dialect
    link._builders = dict(builders or {})
    return clock, link


def outcome(d: defer.Deferred) -> list:
    box: list = []
    d.addBoth(box.append)
    return box


CALLS = [
    ("print", lambda link: link.print("attached"), link_module.ATTACH_CALL_TIMEOUT),
    ("getWorkerInfo", lambda link: link.fetch_info(), link_module.ATTACH_CALL_TIMEOUT),
    ("setBuilderList", lambda link: link.set_builder_list([("b", "b")]),
     link_module.ATTACH_CALL_TIMEOUT),
    ("startBuild", lambda link: link.start_build("b"), link_module.START_TIMEOUT),
    ("startCommand", lambda link: link.start_command("b", object(), "0", "shell", {}),
     link_module.START_TIMEOUT),
    ("interruptCommand", lambda link: link.interrupt_command("b", "0", "why"),
     link_module.INTERRUPT_TIMEOUT),
    ("duplicate print", lambda link: link.check_duplicate(), link_module.DUPLICATE_PING_TIMEOUT),
]


@pytest.mark.parametrize("name, call, deadline", CALLS, ids=[c[0] for c in CALLS])
def test_every_call_to_a_silent_slave_fails_at_its_deadline_and_not_before(name, call, deadline):
    clock, link = make_link(Peer(), builders={"b": Peer()})
    box = outcome(call(link))
    clock.advance(deadline - 0.01)
    assert box == []
    clock.advance(0.02)
    assert box and isinstance(box[0], Failure) and box[0].check(PeerTimeout)
    assert "did not answer" in box[0].getErrorMessage()


def test_a_ping_nobody_answers_is_a_slave_timeout_after_ping_timeout():
    clock, link = make_link(Peer())
    box = outcome(link.ping("b"))
    clock.advance(link_module.PING_TIMEOUT - 0.01)
    assert box == []
    clock.advance(0.02)
    assert box[0].check(SlaveTimeout)


def test_a_slave_era_ping_goes_to_the_builder_and_gives_the_round_trip():
    builder = Peer(print=lambda message: None)
    clock, link = make_link(Peer(), Dialect.SLAVE, builders={"b": builder})
    box = outcome(link.ping("b"))
    assert box == [0.0] and builder.calls == [("print", ("ping",), {})]


def test_a_start_the_slave_does_not_answer_drops_the_connection():
    clock, link = make_link(Peer(), builders={"b": Peer()})
    box = outcome(link.start_command("b", object(), "0", "shell", {}))
    clock.advance(link_module.START_TIMEOUT + 1)
    assert box[0].check(PeerTimeout) and link.broker.transport.aborted


def test_an_interrupt_the_slave_does_not_answer_keeps_the_connection():
    clock, link = make_link(Peer(), builders={"b": Peer()})
    outcome(link.interrupt_command("b", "0", "why"))
    clock.advance(link_module.INTERRUPT_TIMEOUT + 1)
    assert not link.broker.transport.aborted


def test_a_keepalive_never_waits_for_its_answer_and_never_fails():
    mind = Peer()
    clock, link = make_link(mind)
    assert link.keepalive() is None
    clock.advance(link_module.KEEPALIVE_TIMEOUT + 1)  # timed out: swallowed
    assert mind.calls[0][0] == "print" and not link.broker.transport.aborted


def test_calls_on_a_closed_link_fail_as_lost_at_once():
    clock, link = make_link(Peer(print=lambda **kw: None))
    link.close()
    box = outcome(link.print("attached"))
    assert box[0].check(pb.PBConnectionLost)


def test_no_such_method_becomes_missing_method():
    clock, link = make_link(Peer(getWorkerInfo=no_such_method))
    box = outcome(link._call(link.mind, "getWorkerInfo", timeout=1))
    assert box[0].check(MissingMethod)


def test_the_info_chain_falls_back_to_the_slave_era_calls():
    mind = Peer(getWorkerInfo=no_such_method, print=lambda **kw: None,
                getSlaveInfo=lambda: {b"admin": b"someone", b"basedir": b"/old"},
                getCommands=lambda: {b"shell": b"2.16"}, getVersion=lambda: b"0.8.14")
    clock, link = make_link(mind)
    box = outcome(link.fetch_info())
    assert box == [{"admin": "someone", "basedir": "/old", "worker_commands": {"shell": "2.16"},
                    "version": "0.8.14"}]
    assert link.dialect is Dialect.SLAVE and link.commands == {"shell": "2.16"}
    assert [c[0] for c in mind.calls] == ["getWorkerInfo", "print", "getSlaveInfo",
                                          "getCommands", "getVersion"]


def test_shutdown_falls_back_to_a_builders_shutdown_when_the_bot_has_none():
    builder = Peer(shutdown=lambda: defer.fail(pb.PBConnectionLost("gone")))
    clock, link = make_link(Peer(shutdown=no_such_method), Dialect.SLAVE, builders={"b": builder})
    box = outcome(link.shutdown())
    assert box == [None] and builder.calls == [("shutdown", (), {})]


def test_a_bot_shutdown_that_loses_the_connection_is_success():
    builder = Peer()
    clock, link = make_link(Peer(shutdown=lambda: defer.fail(pb.PBConnectionLost("gone"))),
                            builders={"b": builder})
    assert outcome(link.shutdown()) == [None] and builder.calls == []


def test_a_second_builder_list_announces_only_the_new_builders_and_keeps_only_wanted_names():
    refs = {"a": Peer(setMaster=lambda side: None, print=lambda m: None),
            "b": Peer(setMaster=lambda side: None, print=lambda m: None),
            "c": Peer(setMaster=lambda side: None, print=lambda m: None)}

    def set_builder_list(wanted):
        answer = {name.encode(): refs[name] for name, _ in wanted}  # a Python 2 peer's bytes
        answer[b"intruder"] = Peer()
        return answer

    mind = Peer(setBuilderList=set_builder_list, print=lambda **kw: None)
    clock, link = make_link(mind, Dialect.SLAVE)
    assert sorted(outcome(link.set_builder_list([("a", "a"), ("b", "b")]))[0]) == ["a", "b"]
    assert sorted(outcome(link.set_builder_list([("b", "b"), ("c", "c")]))[0]) == ["b", "c"]
    assert link.builder_names == ["b", "c"]
    assert [c[0] for c in refs["b"].calls] == ["setMaster", "print"]  # once, when added
    assert [c[0] for c in refs["c"].calls] == ["setMaster", "print"]


class Command:
    def __init__(self):
        self.updates: list = []
        self.completed: list = []

    def remote_update(self, updates):
        self.updates.append(updates)
        return 0

    def remote_complete(self, failure=None):
        self.completed.append(failure)


def text(command: Command, key: str) -> str:
    return "".join(pairs[0].get(key, "") for updates in command.updates for pairs in updates)


def test_a_python2_character_split_between_updates_arrives_whole():
    command = Command()
    step = StepRef(command)
    step.remote_update([[{b"stdout": b"caf\xc3"}, 0]])
    step.remote_update([({b"stdout": b"\xa9!", b"rc": 0}, 0)])
    step.remote_complete(None)
    assert text(command, "stdout") == "café!"
    assert command.updates[1] == [[{"stdout": "\u00e9!", "rc": 0}, 0]]
    assert command.completed == [None]


def test_a_character_cut_at_the_very_end_is_flushed_before_complete():
    command = Command()
    step = StepRef(command)
    step.remote_update([[{b"stderr": b"x\xe2\x82"}, 0]])
    step.remote_complete(None)
    assert text(command, "stderr") == "x\ufffd"


def test_python3_envelopes_pass_on_untouched():
    command = Command()
    envelope = [[{"stdout": "h\u00e9llo\n"}, 0]]
    StepRef(command).remote_update(envelope)
    assert command.updates[0] is envelope


def test_python2_logfile_text_is_decoded_per_log():
    command = Command()
    step = StepRef(command)
    step.remote_update([[{b"log": (b"test.log", b"\xe2\x82")}, 0]])
    step.remote_update([[{b"log": (b"test.log", b"\xac")}, 0]])
    assert [u[0][0]["log"] for u in command.updates] == [["test.log", ""], ["test.log", "\u20ac"]]
