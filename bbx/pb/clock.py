"""Clock offsets from one request/answer exchange, NTP-style (RFC 5905 §8).

t1: the asker sends; t2: the peer receives; t3: the peer answers; t4: the asker receives,
t1/t4 on the asker's clock and t2/t3 on the peer's. Assuming the two legs take equally long,
the peer's clock is ahead of the asker's by ((t2 - t1) + (t3 - t4)) / 2, give or take half the
round trip. bbx slaves answer the master's `print` with their clock (t2 = t3); a
buildbot-worker answers None, and its offset is unknown.
"""

from __future__ import annotations

# Above this many seconds of skew, `bbx ping` and `bbx doctor` warn: build timestamps from
# the two clocks would disagree visibly (issue 10's default).
DEFAULT_SKEW_WARNING = 2.0


def offset(t1: float, t2: float, t3: float, t4: float) -> float:
    """How far the peer's clock is ahead of ours (negative: behind), in seconds."""
    return ((t2 - t1) + (t3 - t4)) / 2.0


def peer_time(answer) -> float | None:
    """The peer's clock from a `print` answer, or None when it sent none (buildbot-worker)."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return None
    return float(answer)
