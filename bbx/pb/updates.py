"""The update envelope a command's output travels in, and the batcher that fills it.

On the wire an update call carries a list of pairs `[{key: value, ...}, 0]` (docs/protocol.md §5.1).
The 0 is a vestigial sequence number; receivers must accept tuples as well as lists and
several keys in one dict. Each hop — slave to master, master to a watching CLI — passes the
same envelope on.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger

log = Logger()

# Banana refuses any single string longer than 640 KiB (docs/protocol.md §1.1, §6): the sender
# raises and the receiver drops the connection. We cut text at 64 Ki characters, which is
# at most 256 KiB of UTF-8 — far from the limit whatever the text.
BANANA_SIZE_LIMIT = 640 * 1024
MAX_TEXT_CHARS = 64 * 1024

# Flush policy: Buildbot's worker holds output for up to 5 s (docs/protocol.md §5.1); we send as
# soon as the pipe is idle, and while a call is in flight we batch for at most 100 ms or
# until FLUSH_BYTES are pending, whichever comes first.
#
# FLUSH_BYTES and MAX_IN_FLIGHT set the window of unanswered output (bench/stream.py, 200 MB
# through `bbx run` on 2 cores): 64 KiB x 4 in flight gave 62 MB/s, bound by the round trip
# (every role idle half the time); 512 KiB x 8 gave 98-106 MB/s and 1 MiB x 8 another 3-6 %
# over that (1 MiB x 4: no better than 512 KiB x 8), with the master's CPU per 200 MB down
# from 2.0 s to about 0.85 s (fewer, larger calls). Sizes count UTF-8 bytes (characters for
# ASCII text).
FLUSH_DELAY = 0.1
FLUSH_BYTES = 1024 * 1024

# No call carries more than this (a logfile can add megabytes at once): the rest waits for
# the next call. Up to 16 MAX_TEXT_CHARS pieces per call, each far below the Banana limit.
MAX_CALL_BYTES = 1024 * 1024

# How many update calls may await their answer before the producer (the child process) is
# paused. With MAX_CALL_BYTES it bounds the memory held on every hop (at most 8 MiB
# unanswered); TCP alone gives PB no flow control.
MAX_IN_FLIGHT = 8

# Keys whose values are text streams and may be merged and split freely.
TEXT_KEYS = frozenset({"stdout", "stderr", "header"})


def pair(key: str, value: Any) -> list:
    """One update element: `[{key: value}, 0]`."""
    return [{key: value}, 0]


def iter_updates(updates: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """Flatten a received `update` argument into (key, value) pairs, in order.

    Accepts lists or tuples for the pairs, several keys per dict, and bytes keys or text
    values from Python 2 peers (decoded as UTF-8 with replacement, never refused).
    """
    if not isinstance(updates, (list, tuple)):
        return  # not an envelope at all (tests/test_fuzz.py feeds it anything)
    for element in updates:
        data = element[0] if isinstance(element, (list, tuple)) and element else element
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            yield key, _decode(value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Cut text into pieces of at most `limit` characters, so no string nears the Banana limit."""
    if len(text) <= limit:
        return [text]
    return [text[i : i + limit] for i in range(0, len(text), limit)]


def _text_size(text: str) -> int:
    """UTF-8 bytes of `text`; str.isascii() is O(1), so bulk ASCII output costs nothing here."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# What a non-text update (rc, elapsed, failure_reason, ...) counts as.
SMALL_UPDATE_BYTES = 16


def _update_size(key: str, value: Any) -> int:
    if key in TEXT_KEYS and isinstance(value, str):
        return _text_size(value)
    if key == "log" and isinstance(value, (list, tuple)) and len(value) == 2 \
            and isinstance(value[1], str):
        return _text_size(value[1])
    return SMALL_UPDATE_BYTES


class UpdateBatcher:
    """Collects (key, value) updates and sends them in envelopes with flow control.

    `send(list_of_pairs)` makes one remote `update` call and returns its Deferred. Consecutive
    text for the same key is merged; text longer than MAX_TEXT_CHARS is split into several
    pairs, and one call carries as many pairs as fit in `max_call_bytes`. While nothing is
    in flight, an update goes out on the next reactor turn; while calls are in flight it waits
    FLUSH_DELAY or until `flush_bytes` are pending. A registered IPushProducer is paused while
    `max_in_flight` calls are unanswered and resumed when they drain.
    """

    def __init__(
        self,
        send: Callable[[list], defer.Deferred],
        clock: IReactorTime,
        *,
        flush_delay: float = FLUSH_DELAY,
        flush_bytes: int = FLUSH_BYTES,
        max_call_bytes: int = MAX_CALL_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._send = send
        self._clock = clock
        self._flush_delay = flush_delay
        self._flush_bytes = flush_bytes
        self._max_call_bytes = max(max_call_bytes, 1)
        self._max_in_flight = max_in_flight
        self._pending: list[list] = []
        self._sizes: list[int] = []  # _update_size of each pending pair
        self._pending_bytes = 0
        self._timer = None
        self._in_flight = 0
        self._producer: IPushProducer | None = None
        self._paused = False
        self._waiters: list[defer.Deferred] = []
        self.failed = None  # the first send failure, if any

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause `producer` whenever the receiver falls behind."""
        self._producer = producer

    def add(self, key: str, value: Any) -> None:
        """Queue one update. Text keys are merged with the previous pending text of that key."""
        pending = self._pending
        if isinstance(value, str) and key in TEXT_KEYS:
            last = pending[-1][0] if pending else None
            if (last is not None and len(last) == 1 and key in last
                    and len(last[key]) + len(value) <= MAX_TEXT_CHARS):
                size = _text_size(value)
                last[key] += value
                self._sizes[-1] += size
                self._pending_bytes += size
            else:
                for piece in split_text(value):
                    self._append(pair(key, piece), _text_size(piece))
        elif key == "log" and len(value[1]) > MAX_TEXT_CHARS:
            name, text = value
            for piece in split_text(text):
                self._append(pair(key, (name, piece)), _update_size(key, (name, piece)))
        else:
            self._append(pair(key, value), _update_size(key, value))
        self._schedule()

    def _append(self, element: list, size: int) -> None:
        self._pending.append(element)
        self._sizes.append(size)
        self._pending_bytes += size

    def _schedule(self) -> None:
        if not self._pending or self._in_flight >= self._max_in_flight:
            return  # _answered schedules again when a call comes back
        # A flush() waiter wants everything out now, however many calls that takes.
        if self._in_flight == 0 or self._waiters or self._pending_bytes >= self._flush_bytes:
            self._arm(0)
        else:
            self._arm(self._flush_delay)

    def _arm(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if delay == 0 and self._timer.getTime() > self._clock.seconds():
                self._timer.cancel()
            else:
                return
        self._timer = self._clock.callLater(delay, self._flush_now)

    def _take_batch(self) -> list:
        """The longest prefix of the pending pairs within max_call_bytes (at least one pair)."""
        sizes = self._sizes
        total, n = sizes[0], 1
        while n < len(sizes) and total + sizes[n] <= self._max_call_bytes:
            total += sizes[n]
            n += 1
        if n == len(sizes):
            batch, self._pending, self._sizes, self._pending_bytes = self._pending, [], [], 0
        else:
            batch = self._pending[:n]
            del self._pending[:n]
            del self._sizes[:n]
            self._pending_bytes -= total
        return batch

    def _flush_now(self) -> None:
        self._timer = None
        if not self._pending:
            self._check_idle()
            return
        batch = self._take_batch()
        self._in_flight += 1
        if self._in_flight >= self._max_in_flight and self._producer and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        try:
            d = defer.maybeDeferred(self._send, batch)
        except Exception:  # pragma: no cover - maybeDeferred catches
            d = defer.fail()
        d.addErrback(self._send_failed)
        d.addBoth(self._answered)
        if self._pending:
            self._schedule()  # what did not fit in this call

    def _send_failed(self, failure) -> None:
        if self.failed is None:
            self.failed = failure
            log.warn("update call failed: {f}", f=failure.getErrorMessage())

    def _answered(self, _: Any) -> None:
        self._in_flight -= 1
        if self._paused and self._in_flight < self._max_in_flight:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
        if self._pending:
            self._schedule()
        else:
            self._check_idle()

    def _check_idle(self) -> None:
        if self._in_flight == 0 and not self._pending:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def flush(self) -> defer.Deferred:
        """Send everything pending now; fire when every call made so far has been answered.

        Never errbacks: a failed send (the connection went away) still counts as answered.
        """
        d = defer.Deferred()
        self._waiters.append(d)
        if self._pending and self._in_flight < self._max_in_flight:
            self._arm(0)
        else:
            self._check_idle()
        return d

    @property
    def idle(self) -> bool:
        return self._in_flight == 0 and not self._pending
