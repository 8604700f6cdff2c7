"""bbx.pb.banana decodes and encodes exactly like twisted.spread.banana.

Each test runs both codecs on the same input — random jelly-able structures, random byte
streams, PB conversations between a Twisted broker and ours — and compares everything they
produce: bytes, decoded items, exception types and messages.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.testing import StringTransport
from twisted.spread import banana, jelly, pb
from twisted.test import iosim

from bbx.pb.banana import ENABLED, FastBananaMixin, FastBroker

pytestmark = pytest.mark.skipif(not ENABLED, reason="BBX_TWISTED_BANANA is set")


class FastBanana(FastBananaMixin, banana.Banana):
    pass


def codec(cls, dialect=b"pb"):
    """A Banana of `cls` that has negotiated `dialect`, writing to a StringTransport."""
    b = cls(isClient=1)  # a client sends nothing on connect
    b.transport = StringTransport()
    b.connectionMade()
    b._selectDialect(dialect)
    return b


def encode_with(cls, obj, dialect=b"pb"):
    b = codec(cls, dialect)
    try:
        b.sendEncoded(obj)
    except Exception as e:
        return ("error", type(e), str(e))
    return b.transport.value()


def decode_with(cls, chunks, dialect=b"pb"):
    """Feed `chunks` one dataReceived each; (items, (error type, message) or None)."""
    b = codec(cls, dialect)
    items = []
    b.expressionReceived = items.append
    try:
        for chunk in chunks:
            b.dataReceived(chunk)
    except Exception as e:
        return items, (type(e), str(e))
    return items, None


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "abc xyz\n\t0123456789é€😀\x00\x7f"
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_value(rng: random.Random, depth: int = 0):
    """Something jelly can serialise: the kinds that travel in PB calls."""
    kinds = ["int", "bigint", "neg", "float", "str", "bytes", "none", "bool"]
    if depth < 4:
        kinds += ["list", "tuple", "dict"] * 2
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, 127, 128, 2**31 - 1, 2**31, rng.randrange(2**20)])
    if kind == "bigint":
        return rng.choice([2**63, 2**200 + 5, -(2**31) - 1, -(2**100)])
    if kind == "neg":
        return -rng.randrange(1, 2**31)
    if kind == "float":
        return rng.choice([0.0, -1.5, 1e308, rng.random()])
    if kind == "str":
        return random_text(rng, rng.choice([0, 1, 5, 200, 70000]))
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 300])))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    n = rng.randrange(0, 6)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(n)]
    if kind == "tuple":
        return tuple(random_value(rng, depth + 1) for _ in range(n))
    return {random_text(rng, 4): random_value(rng, depth + 1) for _ in range(n)}


def chunkings(rng: random.Random, data: bytes):
    """The same stream cut several ways: whole, byte by byte (when short), at random."""
    yield [data]
    if len(data) <= 2000:
        yield [data[i : i + 1] for i in range(len(data))]
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, max(len(data), 2)), min(len(data) - 1, rng.randrange(1, 20))))
        if len(data) < 2:
            cuts = []
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def test_random_jellied_structures_encode_to_the_same_bytes_and_decode_alike():
    rng = random.Random(1)
    for _ in range(300):
        sexp = jelly.jelly(random_value(rng))
        for dialect in (b"pb", b"none"):
            ours = encode_with(FastBanana, sexp, dialect)
            assert ours == encode_with(banana.Banana, sexp, dialect)
            for chunks in chunkings(rng, ours):
                expected = decode_with(banana.Banana, chunks, dialect)
                assert decode_with(FastBanana, chunks, dialect) == expected
                assert expected == ([sexp if dialect == b"none" else _lists(sexp)], None)


def _lists(sexp):
    """Banana sends tuples as lists."""
    if isinstance(sexp, (list, tuple)):
        return [_lists(x) for x in sexp]
    return sexp


def test_an_update_envelope_of_many_large_pieces_decodes_alike_in_any_chunking():
    rng = random.Random(2)
    envelope = [[{"stdout": random_text(rng, 65536)}, 0] for _ in range(8)] + [[{"rc": 0}, 0]]
    sexp = [b"message", 7, b"update", 1, jelly.jelly((envelope,)), jelly.jelly({})]
    data = encode_with(FastBanana, sexp)
    assert data == encode_with(banana.Banana, sexp)
    tcp_reads = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    for chunks in [tcp_reads, *chunkings(rng, data)]:
        assert decode_with(FastBanana, chunks) == decode_with(banana.Banana, chunks)


def random_stream(rng: random.Random) -> bytes:
    """Mostly well-formed tokens, with garbage, long prefixes and unknown types mixed in."""
    out = bytearray()
    for _ in range(rng.randrange(1, 40)):
        choice = rng.random()
        if choice < 0.5:
            sexp = jelly.jelly(random_value(rng, 2))
            out += encode_with(banana.Banana, sexp)
        elif choice < 0.6:
            out += bytes([rng.randrange(128) for _ in range(rng.choice([1, 63, 64, 65, 70]))])
            out += bytes([rng.randrange(0x80, 0x8a)])
        elif choice < 0.7:
            out += bytes([rng.randrange(256) for _ in range(rng.randrange(1, 10))])
        elif choice < 0.8:
            out += bytes([rng.randrange(1, 128), 0x87])  # a vocabulary number, maybe unknown
        elif choice < 0.9:
            out += bytes([rng.randrange(128), rng.randrange(128), 0x80])  # a list header
        else:
            out += banana.encode(b"x" * rng.randrange(20))[:-rng.randrange(1, 5)]  # truncated
    return bytes(out)


def test_random_byte_streams_give_the_same_items_and_the_same_errors():
    rng = random.Random(3)
    for _ in range(400):
        data = random_stream(rng)
        for dialect in (b"pb", b"none"):
            for chunks in chunkings(rng, data):
                assert decode_with(FastBanana, chunks, dialect) == \
                    decode_with(banana.Banana, chunks, dialect)


@pytest.mark.parametrize("data, chunked", [
    (b"\x01" * 65 + b"\x82", False),   # a type byte after 65 bytes of prefix
    (b"\x01" * 65, False),             # 65 bytes and no type byte yet
    (b"\x01" * 70 + b"\x82", True),    # the same arriving byte by byte
    (banana.encode(b"x" * 64)[:-1] + b"", False),
])
def test_prefix_limit_is_enforced_like_twisted(data, chunked):
    chunks = [data[i : i + 1] for i in range(len(data))] if chunked else [data]
    assert decode_with(FastBanana, chunks) == decode_with(banana.Banana, chunks)


def test_strings_and_lists_beyond_size_limit_are_refused_both_ways():
    too_long = banana.SIZE_LIMIT + 1
    for obj in (b"x" * too_long, [0] * too_long, 2 ** (64 * 7), -(2 ** (64 * 7)), "text", object()):
        ours = encode_with(FastBanana, obj)
        assert isinstance(ours, tuple) and ours == encode_with(banana.Banana, obj)
    prefix = bytearray()
    banana.int2b128(too_long, prefix.extend)
    for typebyte in (b"\x82", b"\x80"):
        chunks = [bytes(prefix) + typebyte]
        got = decode_with(FastBanana, chunks)
        assert got == decode_with(banana.Banana, chunks)
        assert got[1][0] is banana.BananaError
    at_limit = encode_with(banana.Banana, b"y" * banana.SIZE_LIMIT)
    assert decode_with(FastBanana, [at_limit]) == ([b"y" * banana.SIZE_LIMIT], None)


class Root(pb.Root):
    def __init__(self):
        self.received = []

    def remote_update(self, updates):
        self.received.append(updates)
        return len(updates)


@pytest.mark.parametrize("server_cls, client_cls", [
    (FastBroker, pb.Broker), (pb.Broker, FastBroker), (FastBroker, FastBroker)])
def test_a_pb_call_works_between_our_broker_and_twisteds_and_captured_traffic_decodes_alike(
        server_cls, client_cls):
    root = Root()
    server_factory = pb.PBServerFactory(root)
    server_factory.protocol = server_cls
    client_factory = pb.PBClientFactory()
    client_factory.protocol = client_cls
    captured = {"server": [], "client": []}

    def recording(factory, side):
        proto = factory.buildProtocol(None)
        original = proto.dataReceived

        def dataReceived(data):
            captured[side].append(data)
            original(data)

        proto.dataReceived = dataReceived
        return proto

    rng = random.Random(4)
    envelope = [[{"stdout": random_text(rng, 65536)}, 0] for _ in range(5)] + [[{"rc": 1}, 0]]
    client, server, pump = iosim.connectedServerAndClient(
        lambda: recording(server_factory, "server"), lambda: recording(client_factory, "client"))
    results = []
    client_factory.getRootObject().addCallback(
        lambda ref: ref.callRemote("update", envelope)).addBoth(results.append)
    pump.flush()
    assert results == [6]
    assert root.received == [envelope]
    for side in ("server", "client"):
        data = b"".join(captured[side])
        for chunks in [captured[side], *chunkings(rng, data)]:
            assert decode_with(FastBanana, chunks) == decode_with(banana.Banana, chunks)
