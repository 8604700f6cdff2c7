"""UpdateBatcher: how a command's output is cut into update calls, under flow control.

Driven by twisted.internet.task.Clock and Deferreds this test answers by hand: no reactor.
"""

from __future__ import annotations

from twisted.internet import defer, task

from bbx.pb.updates import (
    FLUSH_DELAY,
    MAX_CALL_BYTES,
    MAX_IN_FLIGHT,
    MAX_TEXT_CHARS,
    UpdateBatcher,
    iter_updates,
)


class Receiver:
    """Records each update call; the test answers them (or not) through `calls[i][1]`."""

    def __init__(self):
        self.calls: list[tuple[list, defer.Deferred]] = []

    def send(self, pairs):
        d = defer.Deferred()
        self.calls.append((pairs, d))
        return d

    def answer_all(self):
        for _, d in self.calls:
            if not d.called:
                d.callback(0)

    def text(self, key="stdout") -> str:
        return "".join(v for pairs, _ in self.calls for k, v in iter_updates(pairs) if k == key)


class Producer:
    def __init__(self):
        self.paused = False
        self.pauses = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


def make(**kwargs):
    clock = task.Clock()
    receiver = Receiver()
    return clock, receiver, UpdateBatcher(receiver.send, clock, **kwargs)


def test_first_output_is_sent_on_the_next_reactor_turn():
    clock, receiver, batcher = make()
    batcher.add("stdout", "hello\n")
    assert receiver.calls == []
    clock.advance(0)
    assert [pairs for pairs, _ in receiver.calls] == [[[{"stdout": "hello\n"}, 0]]]


def test_output_while_a_call_is_in_flight_waits_at_most_the_flush_delay():
    clock, receiver, batcher = make()
    batcher.add("stdout", "a")
    clock.advance(0)
    batcher.add("stdout", "b")
    clock.advance(FLUSH_DELAY * 0.9)
    assert len(receiver.calls) == 1
    clock.advance(FLUSH_DELAY * 0.2)
    assert len(receiver.calls) == 2
    assert receiver.text() == "ab"


def test_one_call_carries_several_pieces_each_far_below_the_banana_limit():
    clock, receiver, batcher = make(flush_bytes=2 * MAX_TEXT_CHARS, max_call_bytes=4 * MAX_TEXT_CHARS)
    batcher.add("stdout", "x")
    clock.advance(0)  # one call in flight: the rest is batched
    text = "".join(chr(ord("a") + i % 26) for i in range(3 * MAX_TEXT_CHARS + 5))
    batcher.add("stdout", text)
    clock.advance(0)
    assert len(receiver.calls) == 2
    pieces = [v for k, v in iter_updates(receiver.calls[1][0])]
    assert len(pieces) == 4
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert receiver.text() == "x" + text


def test_no_call_exceeds_max_call_bytes_and_the_rest_follows_in_order():
    clock, receiver, batcher = make()
    text = "".join(str(i % 10) for i in range(5 * MAX_CALL_BYTES + 17))
    batcher.add("log", ("build.log", text))
    batcher.add("rc", 0)
    for _ in range(20):
        clock.advance(0)
        receiver.answer_all()
    sizes = [sum(len(v[1]) if k == "log" else 0 for k, v in iter_updates(pairs))
             for pairs, _ in receiver.calls]
    assert max(sizes) <= MAX_CALL_BYTES
    assert len(receiver.calls) >= 5
    got = "".join(v[1] for pairs, _ in receiver.calls for k, v in iter_updates(pairs) if k == "log")
    assert got == text
    assert list(iter_updates(receiver.calls[-1][0]))[-1] == ("rc", 0)


def test_non_ascii_text_counts_its_utf8_bytes_against_the_call_limit():
    clock, receiver, batcher = make(max_call_bytes=3 * MAX_TEXT_CHARS)
    text = "é" * (2 * MAX_TEXT_CHARS)  # 2 bytes each: 4 * MAX_TEXT_CHARS bytes in all
    batcher.add("stdout", text)
    clock.advance(0)
    first = receiver.calls[0][0]
    assert sum(len(v.encode()) for k, v in iter_updates(first)) <= 3 * MAX_TEXT_CHARS
    receiver.answer_all()
    clock.advance(0)
    assert receiver.text() == text


def test_producer_is_paused_while_max_in_flight_calls_are_unanswered():
    clock, receiver, batcher = make()
    producer = Producer()
    batcher.register_producer(producer)
    for i in range(MAX_IN_FLIGHT):
        batcher.add("stdout", f"{i}\n")
        clock.advance(FLUSH_DELAY)
    assert len(receiver.calls) == MAX_IN_FLIGHT
    assert producer.paused
    batcher.add("stdout", "later\n")
    clock.advance(FLUSH_DELAY)
    assert len(receiver.calls) == MAX_IN_FLIGHT  # nothing more goes out meanwhile
    receiver.calls[0][1].callback(0)
    assert not producer.paused
    clock.advance(FLUSH_DELAY)
    assert receiver.text().endswith("later\n")


def test_flush_sends_everything_and_fires_once_every_call_is_answered():
    clock, receiver, batcher = make(max_call_bytes=MAX_TEXT_CHARS)
    batcher.add("stdout", "x")
    clock.advance(0)
    batcher.add("stdout", "y" * (3 * MAX_TEXT_CHARS))
    done = batcher.flush()
    clock.advance(0)  # no FLUSH_DELAY waits while flushing
    assert len(receiver.calls) == 4
    assert not done.called
    receiver.answer_all()
    assert done.called
    assert receiver.text() == "x" + "y" * (3 * MAX_TEXT_CHARS)
    assert batcher.idle
