"""Clock offsets, NTP-style (bbx/pb/clock.py), and how bbx ping reports them."""

from __future__ import annotations

from bbx.cli.text import ping_lines, skew_warnings
from bbx.pb import clock


def test_offset_is_the_peers_lead_corrected_for_the_round_trip():
    # Sent at 100.0 by us; the peer (3 s ahead) saw it at 103.1 and answered at 103.2; back at 100.4.
    assert abs(clock.offset(100.0, 103.1, 103.2, 100.4) - 2.95) < 1e-9
    assert clock.offset(10.0, 10.5, 10.5, 11.0) == 0.0  # symmetric legs, same clocks
    assert clock.offset(10.0, 5.5, 5.5, 11.0) == -5.0


def test_peer_time_accepts_numbers_only():
    assert clock.peer_time(12.5) == 12.5 and clock.peer_time(7) == 7.0
    assert clock.peer_time(None) is None and clock.peer_time(True) is None
    assert clock.peer_time("12") is None


def answer(offset):
    return {"builder": "b", "slave": "s1", "rtts": [0.002], "slave_offset": offset,
            "local_offset": -0.001}


def test_ping_reports_the_offsets_and_warns_past_the_limit():
    lines = ping_lines(answer(3.5))
    assert "clock: slave s1's clock is 3.500 s ahead of the master's (± 1.0 ms)" in lines
    assert "clock: the master's clock is 1.0 ms behind this host's" in lines
    (warning,) = skew_warnings(answer(-3.5), limit=2.0)
    assert "slave s1's clock is 3.500 s behind the master's, more than 2 s" in warning
    assert skew_warnings(answer(1.5), limit=2.0) == []
    assert skew_warnings(answer(1.5), limit=1.0) != []


def test_a_slave_that_does_not_report_its_clock_is_unknown_not_zero():
    lines = ping_lines(answer(None))
    assert any("offset unknown" in line for line in lines)
    assert skew_warnings(answer(None)) == []
