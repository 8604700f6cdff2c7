"""The update envelope a command's output travels in, and the batcher that fills it.

On the wire an update call carries a list of pairs `[{key: value, ...}, 0]` (PROTOCOL.md §5.1).
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

# Banana refuses any single string longer than 640 KiB (PROTOCOL.md §1.1, §6): the sender
# raises and the receiver drops the connection. We cut text at 64 Ki characters, which is
# at most 256 KiB of UTF-8 — far from the limit whatever the text.
BANANA_SIZE_LIMIT = 640 * 1024
MAX_TEXT_CHARS = 64 * 1024

# Flush policy: Buildbot's worker holds output for up to 5 s (PROTOCOL.md §5.1); we send as
# soon as the pipe is idle, and while a call is in flight we batch for at most 100 ms or
# 64 KiB, whichever comes first.
FLUSH_DELAY = 0.1
FLUSH_BYTES = 64 * 1024

# How many update calls may await their answer before the producer (the child process) is
# paused. Bounds memory on both sides; TCP alone gives PB no flow control.
MAX_IN_FLIGHT = 4

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
    for element in updates:
        data = element[0] if isinstance(element, (list, tuple)) else element
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


class UpdateBatcher:
    """Collects (key, value) updates and sends them in envelopes with flow control.

    `send(list_of_pairs)` makes one remote `update` call and returns its Deferred. Consecutive
    text for the same key is merged; text longer than MAX_TEXT_CHARS is split. While nothing is
    in flight, an update goes out on the next reactor turn; while calls are in flight it waits
    FLUSH_DELAY or until FLUSH_BYTES are pending. A registered IPushProducer is paused while
    MAX_IN_FLIGHT calls are unanswered and resumed when they drain.
    """

    def __init__(
        self,
        send: Callable[[list], defer.Deferred],
        clock: IReactorTime,
        *,
        flush_delay: float = FLUSH_DELAY,
        flush_bytes: int = FLUSH_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._send = send
        self._clock = clock
        self._flush_delay = flush_delay
        self._flush_bytes = flush_bytes
        self._max_in_flight = max_in_flight
        self._pending: list[list] = []
        self._pending_bytes = 0
        self._timer = None
        self._in_flight = 0
        self._producer: IPushProducer | None = None
        self._paused = False
        self._waiters: list[defer.Deferred] = []
        self.sent_calls = 0
        self.failed = None  # the first send failure, if any

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause `producer` whenever the receiver falls behind."""
        self._producer = producer

    def add(self, key: str, value: Any) -> None:
        """Queue one update. Text keys are merged with the previous pending text of that key."""
        if isinstance(value, str) and key in TEXT_KEYS or key == "log":
            size = len(value) if isinstance(value, str) else len(value[1])
        else:
            size = 16
        last = self._pending[-1][0] if self._pending else None
        if (
            isinstance(value, str)
            and key in TEXT_KEYS
            and last is not None
            and list(last) == [key]
            and len(last[key]) + len(value) <= MAX_TEXT_CHARS
        ):
            last[key] += value
        elif isinstance(value, str) and key in TEXT_KEYS:
            for piece in split_text(value):
                self._pending.append(pair(key, piece))
        elif key == "log" and len(value[1]) > MAX_TEXT_CHARS:
            name, text = value
            for piece in split_text(text):
                self._pending.append(pair(key, (name, piece)))
        else:
            self._pending.append(pair(key, value))
        self._pending_bytes += size
        self._schedule()

    def _schedule(self) -> None:
        if not self._pending:
            return
        if self._in_flight == 0 or self._pending_bytes >= self._flush_bytes:
            if self._in_flight < self._max_in_flight:
                self._arm(0)
            return
        self._arm(self._flush_delay)

    def _arm(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if delay == 0 and self._timer.getTime() > self._clock.seconds():
                self._timer.cancel()
            else:
                return
        self._timer = self._clock.callLater(delay, self._flush_now)

    def _flush_now(self) -> None:
        self._timer = None
        if not self._pending:
            self._check_idle()
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._in_flight += 1
        self.sent_calls += 1
        if self._in_flight >= self._max_in_flight and self._producer and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        try:
            d = defer.maybeDeferred(self._send, batch)
        except Exception:  # pragma: no cover - maybeDeferred catches
            d = defer.fail()
        d.addErrback(self._send_failed)
        d.addBoth(self._answered)

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
