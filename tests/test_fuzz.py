"""Fuzzing with hypothesis: the Banana decoder and the update parser against Twisted's own
codec, the expression caps, and a real master's PB port fed random and hostile streams while a
real slave stays attached and pingable.

Budgets are modest (the suite runs on 2 cores); raise them locally with
HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.spread import banana, jelly

from bbx.pb.banana import ENABLED, ExpressionTooLarge, FastBananaMixin
from bbx.pb.updates import iter_updates

settings.register_profile("suite", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

pytestmark = pytest.mark.skipif(not ENABLED, reason="BBX_TWISTED_BANANA is set")


class FastBanana(FastBananaMixin, banana.Banana):
    pass


class _DeepestStack(list):
    """Twisted's list stack, remembering how deep it got."""

    deepest = 0

    def append(self, entry):
        super().append(entry)
        self.deepest = max(self.deepest, len(self))


def _codec(cls, dialect=b"pb", **caps):
    b = cls(isClient=1)
    b.transport = StringTransport()
    b.connectionMade()
    b._selectDialect(dialect)
    for name, value in caps.items():
        setattr(b, name, value)
    return b


def _decode(cls, chunks, dialect=b"pb", **caps):
    """(items, error type or None, the codec) after feeding `chunks`."""
    b = _codec(cls, dialect, **caps)
    if cls is banana.Banana:
        b.listStack = _DeepestStack()
    items = []
    b.expressionReceived = items.append
    try:
        for chunk in chunks:
            b.dataReceived(chunk)
    except Exception as e:
        return items, type(e), b
    return items, None, b


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return [c for c in out if c] or [b""]


# Bytes that are mostly Banana-shaped: type bytes, small prefixes, vocabulary numbers.
banana_bytes = st.lists(st.one_of(
    st.sampled_from([b"\x80", b"\x01\x80", b"\x02\x80", b"\x81", b"\x05\x81", b"\x83",
                     b"\x03\x82abc", b"\x00\x82", b"\x0b\x87", b"\x01\x87", b"\x84" + b"\x00" * 8,
                     b"\x85", b"\x86", b"\x7f\x7f\x81", b"\xff", b"\x88"]),
    st.binary(max_size=12)), max_size=60).map(b"".join)


@given(data=banana_bytes, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_fast_decoder_matches_twisted_on_any_stream(data, cuts):
    chunks = _split(data, cuts)
    ours, our_error, _ = _decode(FastBanana, chunks)
    theirs, their_error, twisted = _decode(banana.Banana, chunks)
    if our_error is ExpressionTooLarge:
        # Only the depth cap can be reached by streams this small.
        assert twisted.listStack.deepest > FastBanana.max_depth
        return
    assert ours == theirs
    assert our_error == their_error


# Values that travel in PB calls, nested.
leaves = st.one_of(st.integers(0, 100), st.integers(-2**70, 2**70), st.binary(max_size=40),
                   st.binary(min_size=60, max_size=120),
                   st.floats(allow_nan=False),
                   st.sampled_from([b"dictionary", b"tuple", b"None", b"remote"]))


def _wrapped(value_and_depth):
    value, depth = value_and_depth
    for _ in range(depth):
        value = [value]
    return value


# Bushy trees; the same inside a chain of one-element lists (deep, few bytes); long lists of
# small ints (many items, few bytes). Each of the caps below is passed alone by some of them.
trees = st.recursive(leaves, lambda inner: st.lists(inner, max_size=8), max_leaves=60)
nested = st.one_of(trees, st.tuples(trees, st.integers(1, 8)).map(_wrapped),
                   st.lists(st.integers(0, 100), min_size=20, max_size=50))


def _depth(value) -> int:
    return 1 + max(map(_depth, value), default=0) if isinstance(value, list) else 0


def _items(value) -> int:
    return 1 + sum(map(_items, value)) if isinstance(value, list) else 1


@given(value=nested, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_anything_twisted_encodes_we_decode_alike_in_any_split(value, cuts):
    encoded = banana.encode([value])
    ours, error, _ = _decode(FastBanana, _split(encoded, cuts), dialect=b"none")
    assert error is None and ours == [[value]]


# Small caps, so that each can be passed alone by the values above.
CAPS = dict(max_depth=5, max_expression_items=30, max_expression_bytes=300)


@given(value=nested, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_an_expression_is_refused_exactly_when_it_passes_a_cap(value, cuts):
    encoded = banana.encode(value)
    over = (_depth(value) > CAPS["max_depth"] or _items(value) > CAPS["max_expression_items"]
            or len(encoded) > CAPS["max_expression_bytes"])
    # Twice, to show the counts start afresh for each expression.
    ours, error, _ = _decode(FastBanana, _split(encoded * 2, cuts), dialect=b"none", **CAPS)
    if over:
        assert error is ExpressionTooLarge and ours == []
    else:
        assert error is None and ours == [value, value]


# -- the update parser --------------------------------------------------------------------------

text = st.text(max_size=30)
update_value = st.one_of(text, st.integers(-5, 300), st.none(),
                         st.tuples(text, text).map(list), st.floats(allow_nan=False))
envelope = st.lists(st.tuples(st.dictionaries(st.sampled_from(
    ["stdout", "stderr", "header", "rc", "log", "elapsed", "failure_reason"]), update_value,
    min_size=1, max_size=3), st.just(0)).map(list), max_size=6)


def _through_the_wire(value):
    """What the master's broker gets when a Twisted peer sends `value` as an argument."""
    encoded = banana.encode(jelly.jelly(value))
    items, error, _ = _decode(FastBanana, [encoded], dialect=b"none")
    assert error is None
    return jelly.unjelly(items[0])


@given(updates=envelope)
def test_update_envelopes_survive_twisteds_codec_and_parse_to_the_same_pairs(updates):
    expected = [(k, tuple(v) if isinstance(v, list) else v)
                for element in updates for k, v in element[0].items()]
    got = [(k, tuple(v) if isinstance(v, (list, tuple)) else v)
           for k, v in iter_updates(_through_the_wire(updates))]
    assert got == expected


anything = st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                  st.binary(max_size=5), st.booleans()),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.tuples(inner, inner),
                                                st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3)),
                        max_leaves=20)


@given(updates=anything)
def test_the_update_parser_takes_any_shape_a_peer_can_send(updates):
    for key, _ in iter_updates(_through_the_wire(updates)):
        assert key is not None


# -- a real master's port, fed garbage, with a real slave attached --------------------------------

@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    from tests.buildfarm import Farm, master_toml

    f = Farm(tmp_path_factory.mktemp("fuzzport"),
             master_toml('[[builders]]\nname = "b"\nslaves = ["s1"]\n',
                         master_extra="login_timeout = 1"))
    try:
        f.start_master()
        f.start_slave("s1")
        yield f
    finally:
        f.stop()


PB_DIALECT = b"\x02\x82pb"
hostile_stream = st.one_of(
    st.binary(min_size=1, max_size=300),
    banana_bytes.map(lambda b: PB_DIALECT + b),
    st.integers(1, 2000).map(lambda n: PB_DIALECT + b"\x01\x80" * n),
    nested.map(lambda v: PB_DIALECT + banana.encode([b"message", 1, b"root", b"login", 1, v])),
)


def test_the_port_takes_random_and_hostile_streams_while_the_slave_stays_served(farm, tmp_path):
    import sys

    from tests.buildfarm import PASSWORD
    from tests.hostile import HOSTILE, connect, is_closed
    from tests.support import Proc, wait_until

    pinger = Proc([sys.executable, HOSTILE, "pinger", "127.0.0.1", farm.port, "admin", PASSWORD,
                   "b", 20], log_path=tmp_path / "pinger.out")
    pinger.wait_for_output("logged_in", timeout=30)
    mark = len((farm.dir / "master.log").read_text())

    @settings(max_examples=80, deadline=None)
    @given(stream=hostile_stream)
    def feed(stream):
        sock = connect(farm.port)
        try:
            sock.sendall(stream)
        except OSError:
            pass  # dropped while we were still sending
        # The master closes it: at once for garbage, at the 1 s deadline for the rest.
        wait_until(lambda: is_closed(sock), 10, interval=0.01, what="the master to close it")
        sock.close()

    feed()
    pinger.wait_for_output("worst", timeout=60)
    served = json.loads(pinger.output().strip().splitlines()[-1])
    # Pingable throughout; how fast is bench material, not a test's.
    assert served["pings"] >= 10 and served["worst"] < 10.0, served
    assert "s1" in farm.attached()
    new = (farm.dir / "master.log").read_text()[mark:]
    assert "Traceback" not in new and "Unhandled" not in new, new[-3000:]
