"""Peer failures the master must read whichever Python the peer runs (bbx/pb/failures.py).

PY2_NO_SUCH_METHOD is byte for byte what a real buildslave 0.8.14 (Python 2.7, Twisted 20.3)
sent when a master called getWorkerInfo, captured from the wire (the jellied failure inside the
"error" message). Python 3 Twisted alone fails on it with KeyError: 'parents'.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.spread import flavors, pb

from bbx.pb import failures
from bbx.pb.endpoints import remote_type

PY2_NO_SUCH_METHOD = [
    b"twisted.spread.pb.CopyableFailure",
    [b"dictionary",
     [b"count", 6],
     [b"captureVars", [b"boolean", b"false"]],
     [b"type", b"twisted.spread.flavors.NoSuchMethod"],
     [b"traceback", b"Traceback unavailable\n"],
     [b"value", b"No such method: remote_getWorkerInfo"],
     [b"unsafeTracebacks", [b"boolean", b"false"]],
     [b"parents", [b"list", b"twisted.spread.flavors.NoSuchMethod", b"exceptions.AttributeError",
                   b"exceptions.StandardError", b"exceptions.Exception",
                   b"exceptions.BaseException", b"__builtin__.object"]],
     [b"frames", [b"list"]],
     [b"tb", [b"None"]],
     [b"stack", [b"list"]]],
]


def unserialize(sexp):
    """What a broker does with the failure inside an "error" message (pb.Broker.proto_error)."""
    return pb.Broker().unserialize(sexp)


def test_a_python2_peers_no_such_method_unserialises_and_says_what_it_is():
    failure = unserialize(PY2_NO_SUCH_METHOD)
    assert isinstance(failure, failures.PeerFailure)
    assert failure.check("twisted.spread.flavors.NoSuchMethod")
    assert failure.check("exceptions.AttributeError")
    assert failure.getErrorMessage() == "No such method: remote_getWorkerInfo"
    assert remote_type(failure) == "twisted.spread.flavors.NoSuchMethod"


def test_inside_inline_callbacks_it_raises_a_remote_error_naming_the_type():
    failure = unserialize(PY2_NO_SUCH_METHOD)

    def generator():
        yield None

    g = generator()
    next(g)
    try:
        failure.throwExceptionIntoGenerator(g)
    except pb.RemoteError as e:
        assert e.remoteType == b"twisted.spread.flavors.NoSuchMethod"
        assert "remote_getWorkerInfo" in str(e)
    else:
        raise AssertionError("no RemoteError")


def test_a_python3_peers_failure_still_reads_as_before():
    try:
        raise flavors.NoSuchMethod("No such method: remote_getWorkerInfo")
    except flavors.NoSuchMethod:
        copyable = pb.failure2Copyable(Failure())
    sexp = pb.Broker().serialize(copyable)
    failure = unserialize(sexp)
    assert failure.check("twisted.spread.flavors.NoSuchMethod")
    assert failure.check("builtins.AttributeError")
    assert failure.type == b"twisted.spread.flavors.NoSuchMethod"
    assert failure.getErrorMessage() == "No such method: remote_getWorkerInfo"


def test_a_state_without_parents_falls_back_to_its_type():
    state = failures.normalise_state({b"type": b"x.Boom", b"value": b"boom"})
    assert state["parents"] == ["x.Boom"] and state["value"] == "boom"
    assert state["traceback"] == ""


def test_undecodable_bytes_in_a_failure_do_not_break_it():
    state = failures.normalise_state({b"type": b"x.Boom", b"value": b"caf\xe9",
                                      b"parents": [b"x.Boom"]})
    assert state["value"] == "caf\ufffd"


def test_a_state_that_is_not_a_dict_still_gives_a_failure():
    state = failures.normalise_state(["nonsense"])
    assert state["type"] == b"exceptions.Exception" and state["parents"]
