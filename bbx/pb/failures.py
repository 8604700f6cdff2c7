"""Failures sent by peers that Twisted's own CopiedFailure cannot read: Python 2 peers.

A peer's error answer carries a jellied `twisted.spread.pb.CopyableFailure` whose state is
the Failure's attribute dict (docs/protocol.md §1.2). A Python 2 Twisted peer — every Buildbot 0.8
slave and master — jellies that dict with byte-string keys and values, e.g. (captured from a
real buildslave 0.8.14 on Twisted 20.3, answering getWorkerInfo; tests/test_pb_failures.py):

    {b"type": b"twisted.spread.flavors.NoSuchMethod",
     b"value": b"No such method: remote_getWorkerInfo",
     b"parents": [b"twisted.spread.flavors.NoSuchMethod", b"exceptions.AttributeError", ...],
     b"traceback": b"Traceback unavailable\\n", b"count": 6, b"frames": [], ...}

Python 3 Twisted's CopiedFailure looks up the str key "parents" and raises KeyError inside
the broker's dataReceived: the call's Deferred never fires and the master never learns that
the peer simply lacks the method, so it cannot fall back to the older one.

`PeerFailure` takes CopiedFailure's place for every broker in the process: it turns such a
state into the one a Python 3 peer sends (str keys, str value and traceback, str parents;
`type` stays bytes, as Python 3 peers send it) and then behaves exactly like CopiedFailure.
`failure.check("twisted.spread.flavors.NoSuchMethod")` then works for both generations.
Importing this module installs it; bbx/master/link.py and bbx/slave/connection.py do.
"""

from __future__ import annotations

from typing import Any

from twisted.spread import jelly, pb

# Keys whose values are text in a Python 3 peer's failure state.
_TEXT_KEYS = ("value", "traceback")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def normalise_state(state: Any) -> dict:
    """A CopyableFailure state from either generation, as a Python 3 peer would send it."""
    if not isinstance(state, dict):
        state = {}
    out = {_text(key): value for key, value in state.items()}
    kind = out.get("type")
    if isinstance(kind, str):
        kind = kind.encode("utf-8")
    elif not isinstance(kind, bytes):
        kind = b"exceptions.Exception" if kind is None else str(kind).encode("utf-8")
    out["type"] = kind
    for key in _TEXT_KEYS:
        value = _text(out.get(key))
        out[key] = value if isinstance(value, str) else ("" if value is None else str(value))
    parents = out.get("parents")
    if not isinstance(parents, (list, tuple)) or not parents:
        parents = [kind]  # Twisted's own fallback: the type itself
    out["parents"] = [_text(p) if isinstance(p, bytes) else str(p) for p in parents]
    return out


class PeerFailure(pb.CopiedFailure):
    """A CopiedFailure that also reads the state a Python 2 Twisted peer sends."""

    def setCopyableState(self, state):
        super().setCopyableState(normalise_state(state))


jelly.setUnjellyableForClass(pb.CopyableFailure, PeerFailure)
