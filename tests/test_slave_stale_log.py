"""A call on a connection the slave no longer uses is logged with the method name escaped and
bounded: the name is whatever bytes the peer sent."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.logger import formatEvent, globalLogPublisher

from bbx.master.slave import STALE_NAME_LIMIT, SlavePerspective


def test_a_hostile_method_name_from_a_stale_connection_is_escaped_and_cut():
    perspective = SlavePerspective.__new__(SlavePerspective)
    perspective.config = SimpleNamespace(name="s1")
    perspective.link = None  # no current connection: every broker is stale
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hostile = b"keepalive\x1b[2J\n" + b"x" * 100_000
        assert perspective.perspectiveMessageReceived(object(), hostile, (), {}) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "stale connection" in (e.get("log_format") or "")]
    assert len(lines) == 1
    line = lines[0]
    assert "\x1b" not in line and "\n" not in line
    assert "\\x1b[2J\\n" in line and "(100014 characters)" in line
    assert len(line) < STALE_NAME_LIMIT + 200
