"""A faster Banana codec for our PB brokers, byte-for-byte the same as Twisted's.

Twisted's `Banana.dataReceived` copies the rest of its buffer once per decoded item (a
64 Ki-character update costs a dozen copies of everything behind it), and re-joins a
partial string with each new TCP read, so a large message is copied again and again; its
encoder makes one Python call per byte of every length prefix. `bench/stream.py` (200 MB of
`bbx run` output, docs/protocol.md §5.1) showed Banana decoding as the largest own-time item in
the master and the CLI.

`FastBananaMixin` replaces `dataReceived` with an offset-based decoder that keeps a partial
message as a list of chunks until it can be complete, and `sendEncoded`/`_encode` with an
encoder that writes each prefix as one piece. Both enforce what Twisted enforces, the same
way: SIZE_LIMIT for strings and lists (docs/protocol.md §1.1; the decoder reads
`twisted.spread.banana.SIZE_LIMIT` as Twisted does), the per-connection `prefixLimit`
(64 bytes), the pb-only vocabulary, and Twisted's exception types. The wire format is
untouched: real Buildbot and buildbot-worker peers see no difference
(tests/test_banana.py compares both codecs on random structures and on split streams).

Neither decoder lets one expression (one PB message) grow without bound: Twisted limits each
string and each list's length, but not how deeply lists nest nor how much one message holds
in total, so 20 MB of list-open tokens made a master hold 1.4 GB. Both decoders here (the
fast one, and Twisted's when BBX_TWISTED_BANANA=1) stop at MAX_DEPTH, MAX_EXPRESSION_BYTES
and MAX_EXPRESSION_ITEMS with an ExpressionTooLarge error; FastBroker turns that, and any
other undecodable input, into one log line and a dropped connection (`peer_misbehaved`).

Set BBX_TWISTED_BANANA=1 in the environment to use Twisted's own codec instead (a fallback
for diagnosis); `FastBroker` then behaves like `pb.Broker` plus those limits.
"""

from __future__ import annotations

import os
import struct

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import banana, pb
from twisted.spread.banana import BananaError
from twisted.spread.flavors import NoSuchMethod
from twisted.spread.jelly import InsecureJelly

log = Logger(namespace="bbx.pb")

# The type bytes of the Banana wire format (twisted.spread.banana), as ints.
_LIST, _INT, _STRING, _NEG, _FLOAT, _LONGINT, _LONGNEG, _VOCAB = range(0x80, 0x88)
_HIGH_BIT = 0x80
_FLOAT_SIZE = 8  # "!d"

# Twisted's INT type covers exactly the 32-bit range; larger magnitudes go as LONGINT/LONGNEG.
_LARGEST_INT = 2**31 - 1
_SMALLEST_INT = -(2**31)

_unpack_double = struct.Struct("!d").unpack_from
_pack_double = struct.Struct("!d").pack

ENABLED = os.environ.get("BBX_TWISTED_BANANA", "") in ("", "0")

# Caps on one expression (one PB message), for every broker of every role. Chosen from the
# largest legitimate traffic, with room to spare:
# - depth: a jellied update call nests 7 lists ([message [tuple [list [list [dictionary
#   [key value]]]]]]), a `builds` answer or an info dict 6; 32 is far above that and far
#   below what unjelly's recursion survives.
MAX_DEPTH = 32
# - bytes: the largest message is an update call of bbx.pb.updates.MAX_CALL_BYTES (1 MiB of
#   text) plus its envelope; a Buildbot worker sends 64 KiB at a time, file blocks are at most
#   256 KiB. 4 MiB leaves 4x headroom.
MAX_EXPRESSION_BYTES = 4 * 1024 * 1024
# - items (tokens: strings, numbers, lists): the largest answer is `builds` with
#   MAX_BUILDS_LISTED = 1000 rows of 13 keys, about 41,000 items; an info dict with a
#   10,000-variable environment about 30,000. Each decoded item costs up to ~100 bytes of
#   memory (an empty list is one byte on the wire and 64 in memory), so this cap, not the byte
#   cap, bounds what tiny tokens can cost: 250,000 items is at most ~25 MB.
MAX_EXPRESSION_ITEMS = 250_000


class ExpressionTooLarge(BananaError):
    """A peer sent one expression deeper, longer or with more items than the caps allow."""


def _too_deep(depth: int) -> ExpressionTooLarge:
    return ExpressionTooLarge(f"lists nested more than {depth} deep")


def _too_long(limit: int) -> ExpressionTooLarge:
    return ExpressionTooLarge(f"one expression larger than {limit} bytes")


def _too_many(limit: int) -> ExpressionTooLarge:
    return ExpressionTooLarge(f"one expression with more than {limit} items")


def printable(text, limit: int = 200) -> str:
    """`text` (str or bytes) fit for one log line: control characters escaped, at most
    `limit` characters, with the original length noted when cut."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")
    text = str(text)
    cut = len(text) > limit
    shown = text[:limit] if cut else text
    shown = "".join(c if c.isprintable() and c not in "\\" else
                    c.encode("unicode_escape").decode("ascii") for c in shown)
    return f"{shown}... ({len(text)} characters)" if cut else shown


def _b128(integer: int) -> bytes:
    """Twisted's int2b128 as one bytes object: 7 bits per byte, least significant first."""
    if integer < 128:
        return _SMALL[integer]
    out = bytearray()
    while integer:
        out.append(integer & 0x7F)
        integer >>= 7
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(128)]
# Prefix + type byte for the most common headers: lists and vocabulary symbols up to 127.
_LIST_HEADER = [bytes((i, _LIST)) for i in range(128)]
_VOCAB_HEADER = [bytes((i, _VOCAB)) for i in range(128)]


class FastBananaMixin:
    """Put before `pb.Broker` (or `banana.Banana`) in the bases to decode and encode faster.

    Needs the Banana attributes Twisted sets: listStack, prefixLimit (from connectionMade),
    currentDialect, incomingVocabulary, outgoingSymbols, gotItem.
    """

    # The caps (instances may lower them; tests do).
    max_depth = MAX_DEPTH
    max_expression_bytes = MAX_EXPRESSION_BYTES
    max_expression_items = MAX_EXPRESSION_ITEMS
    # The expression being decoded: its bytes in buffers already let go of, and its items.
    _expr_bytes = 0
    _expr_items = 0

    if ENABLED:
        # Chunks of an incomplete item not yet joined, their total length, and the length
        # the joined buffer needs before decoding can go on (a string's end, or one more byte).
        _parts: list[bytes] | None = None
        _have = 0
        _need = 0

        def dataReceived(self, chunk):
            parts = self._parts
            if parts is not None:
                parts.append(chunk)
                self._have += len(chunk)
                if self._have < self._need:
                    return
                buffer = b"".join(parts)
                self._parts = None
            elif self.buffer:
                buffer = self.buffer + chunk
            else:
                buffer = chunk
            self.buffer = b""
            self._decode(buffer)

        def _decode(self, buffer: bytes) -> None:
            listStack = self.listStack
            gotItem = self.gotItem
            limit = self.prefixLimit
            size_limit = banana.SIZE_LIMIT
            max_depth = self.max_depth
            max_bytes = self.max_expression_bytes
            max_items = self.max_expression_items
            end = len(buffer)
            pos = 0
            start = 0
            # The open expression's size is carried + (pos - base): `carried` bytes came in
            # earlier buffers, the rest from offset `base` of this one.
            carried = self._expr_bytes
            base = 0
            items = self._expr_items
            try:
                while pos < end:
                    start = pos
                    if not listStack:  # a new top-level expression begins here
                        carried = 0
                        base = pos
                        items = 0
                    # The prefix: up to `limit` bytes below 0x80, then the type byte.
                    stop = pos + limit + 1
                    if stop > end:
                        stop = end
                    i = pos
                    while i < stop and buffer[i] < _HIGH_BIT:
                        i += 1
                    if i == stop:
                        if end - pos > limit:
                            self._prefix_too_long(buffer, pos, end, limit)
                        self._expr_bytes = carried + (pos - base)
                        self._expr_items = items
                        self._wait(buffer, pos, end, end + 1)  # any further byte may end it
                        return
                    if i == pos + 1:
                        num = buffer[pos]
                    else:
                        num = 0
                        shift = 0
                        for k in range(pos, i):
                            num |= buffer[k] << shift
                            shift += 7
                    typebyte = buffer[i]
                    pos = i + 1
                    items += 1
                    if items > max_items:
                        raise _too_many(max_items)
                    if carried + (pos - base) > max_bytes:
                        raise _too_long(max_bytes)
                    if typebyte == _STRING:
                        if num > size_limit:
                            raise BananaError("Security precaution: String too long.")
                        if carried + (pos - base) + num > max_bytes:
                            raise _too_long(max_bytes)
                        if end - pos < num:
                            self._expr_bytes = carried + (start - base)
                            self._expr_items = items - 1
                            self._wait(buffer, start, end, pos + num)
                            return
                        item = buffer[pos : pos + num]
                        pos += num
                        gotItem(item)
                    elif typebyte == _VOCAB:
                        item = self.incomingVocabulary[num]
                        if self.currentDialect == b"pb":
                            # the sender issues VOCAB only for dialect pb
                            gotItem(item)
                        else:
                            raise NotImplementedError(f"Invalid item for pb protocol {item!r}")
                    elif typebyte == _LIST:
                        if num > size_limit:
                            raise BananaError("Security precaution: List too long.")
                        if len(listStack) >= max_depth:
                            raise _too_deep(max_depth)
                        listStack.append((num, []))
                    elif typebyte == _INT or typebyte == _LONGINT:
                        gotItem(num)
                    elif typebyte == _NEG or typebyte == _LONGNEG:
                        gotItem(-num)
                    elif typebyte == _FLOAT:
                        if carried + (pos - base) + _FLOAT_SIZE > max_bytes:
                            raise _too_long(max_bytes)
                        if end - pos < _FLOAT_SIZE:
                            self._expr_bytes = carried + (start - base)
                            self._expr_items = items - 1
                            self._wait(buffer, start, end, pos + _FLOAT_SIZE)
                            return
                        value = _unpack_double(buffer, pos)[0]
                        pos += _FLOAT_SIZE
                        gotItem(value)
                    else:
                        raise NotImplementedError(f"Invalid Type Byte {bytes((typebyte,))!r}")
                    while listStack and len(listStack[-1][1]) == listStack[-1][0]:
                        gotItem(listStack.pop()[1])
                if listStack:
                    self._expr_bytes = carried + (end - base)
                    self._expr_items = items
                else:
                    self._expr_bytes = self._expr_items = 0
            except BaseException:
                # As Twisted leaves it: the buffer from the item that failed onwards.
                self.buffer = buffer[start:]
                raise

        def _wait(self, buffer: bytes, pos: int, end: int, need_end: int) -> None:
            """Keep buffer[pos:] for later reads, unjoined until buffer[:need_end] is there."""
            rest = buffer[pos:] if pos else buffer
            self._parts = [rest]
            self._have = len(rest)
            self._need = need_end - pos

        def _prefix_too_long(self, buffer: bytes, pos: int, end: int, limit: int):
            # Twisted's two messages: no type byte at all yet, or one after too long a prefix.
            for i in range(pos, end):
                if buffer[i] >= _HIGH_BIT:
                    raise BananaError(
                        "Security precaution: longer than %d bytes worth of prefix" % (limit,))
            raise BananaError("Security precaution: more than %d bytes of prefix" % (limit,))

    else:
        # Twisted's decoder with the same caps: depth when a list opens (the stack below),
        # items per gotItem, bytes counted per read (so to within one read, <= 64 KiB on TCP).

        def connectionMade(self):
            super().connectionMade()
            self.listStack = _DepthLimitedStack(self.max_depth)

        def dataReceived(self, chunk):
            if self.listStack or self.buffer:
                self._expr_bytes += len(chunk)
            else:
                self._expr_bytes = len(chunk)
                self._expr_items = 0
            super().dataReceived(chunk)
            if self._expr_bytes > self.max_expression_bytes and (self.listStack or self.buffer):
                raise _too_long(self.max_expression_bytes)

        def gotItem(self, item):
            self._expr_items += 1
            if self._expr_items > self.max_expression_items:
                raise _too_many(self.max_expression_items)
            if not self.listStack:
                self._expr_items = 0
            super().gotItem(item)

    if ENABLED:
        def sendEncoded(self, obj):
            parts: list[bytes] = []
            self._encode(obj, parts.append)
            self.transport.write(b"".join(parts))

        def _encode(self, obj, write):
            # Same checks and the same bytes as Banana._encode; tested against it.
            kind = type(obj)
            if kind is list or kind is tuple or isinstance(obj, (list, tuple)):
                n = len(obj)
                if n > banana.SIZE_LIMIT:
                    raise BananaError("list/tuple is too long to send (%d)" % (n,))
                write(_LIST_HEADER[n] if n < 128 else _b128(n) + b"\x80")
                encode = self._encode
                for elem in obj:
                    encode(elem, write)
            elif kind is bytes or isinstance(obj, bytes):
                if self.currentDialect == b"pb":
                    symbol = self.outgoingSymbols.get(obj)
                    if symbol is not None:
                        write(_VOCAB_HEADER[symbol] if symbol < 128 else _b128(symbol) + b"\x87")
                        return
                n = len(obj)
                if n > banana.SIZE_LIMIT:
                    raise BananaError("byte string is too long to send (%d)" % (n,))
                write(_b128(n) + b"\x82")
                write(obj)
            elif kind is int or isinstance(obj, int):
                if obj < self._smallestLongInt or obj > self._largestLongInt:
                    raise BananaError("int is too large to send (%d)" % (obj,))
                if obj < _SMALLEST_INT:
                    write(_b128(-obj) + b"\x86")
                elif obj < 0:
                    write(_b128(-obj) + b"\x83")
                elif obj <= _LARGEST_INT:
                    write(_b128(obj) + b"\x81")
                else:
                    write(_b128(obj) + b"\x85")
            elif isinstance(obj, float):
                write(b"\x84" + _pack_double(obj))
            else:
                # Twisted's own error message for anything else.
                banana.Banana._encode(self, obj, write)


class _DepthLimitedStack(list):
    """Twisted's Banana list stack that refuses to grow past `depth` open lists."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth

    def append(self, entry):
        if len(self) >= self.depth:
            raise _too_deep(self.depth)
        super().append(entry)


class _GuardedObject:
    """A local object while it handles one remote call. A call it cannot take (no such
    method, arguments jelly refuses) is answered with that very failure — peers key on its
    type, e.g. twisted.spread.flavors.NoSuchMethod or a perspective's AttributeError to
    detect an older peer (docs/protocol.md §10.2) — but logged as one line instead of Twisted's
    traceback."""

    def __init__(self, obj, answer_required):
        self.obj = obj
        self.answer_required = answer_required

    def remoteMessageReceived(self, broker, message, args, kw):
        try:
            return self.obj.remoteMessageReceived(broker, message, args, kw)
        except pb.Error:
            raise
        except Exception as e:
            peer_fault = isinstance(e, (NoSuchMethod, InsecureJelly)) or (
                isinstance(e, AttributeError) and not _has_method(self.obj, message))
            why = f"{type(e).__name__}: {printable(e)}"
            if not broker.call_refused(printable(message, 64), why, peer_fault):
                raise
            failure = Failure()
            failure.logged_by_bbx = True  # _sendFailureOrError sends it without a traceback
            return defer.fail(failure) if self.answer_required else None


def _has_method(obj, message: str) -> bool:
    """Whether `obj` (a Referenceable, or the wrapper of a perspective) has a method the
    peer may call as `message`."""
    for target in (obj, getattr(obj, "object", None)):
        if target is not None and any(hasattr(target, prefix + message)
                                      for prefix in ("remote_", "perspective_", "view_")):
            return True
    return False


class FastBroker(FastBananaMixin, pb.Broker):
    """A `pb.Broker` with the faster Banana codec and the expression caps; a drop-in base for
    our brokers.

    Whatever the peer sends that cannot be decoded or dispatched — bytes over a cap, an
    unknown type byte, a message PB cannot make sense of — is logged as one line (no
    traceback) and the connection is dropped: `peer_misbehaved(why)`, which a role's broker
    may override to route the line elsewhere.
    """

    def dataReceived(self, chunk):
        if self._dropped:
            return
        try:
            super().dataReceived(chunk)
        except Exception as e:
            self.peer_misbehaved(f"{type(e).__name__}: {printable(e)}")

    def callExpressionReceived(self, obj):
        if not self.currentDialect and not self.isClient and obj not in self.knownDialects:
            # Twisted would log its own line and close; one line of ours says who it was.
            self.peer_misbehaved(f"it chose a Banana dialect not offered: {printable(repr(obj), 40)}")
            return
        super().callExpressionReceived(obj)

    def _recvMessage(self, findObjMethod, requestID, objectID, message, answerRequired,
                     netArgs, netKw):
        def guarded(object_id):
            obj = findObjMethod(object_id)
            return None if obj is None else _GuardedObject(obj, answerRequired)

        super()._recvMessage(guarded, requestID, objectID, message, answerRequired, netArgs,
                             netKw)

    def _sendFailureOrError(self, fail, requestID):
        if getattr(fail, "logged_by_bbx", False):
            self._sendError(fail, requestID)  # already logged as one line by call_refused
        else:
            super()._sendFailureOrError(fail, requestID)

    def call_refused(self, message: str, why: str, peer_fault: bool) -> bool:
        """A peer's call to `message` failed (`why`); `peer_fault` when the peer asked for
        something that does not exist or sent what jelly refuses. True when it has been
        logged as one line here, False to let Twisted report it, traceback and all."""
        if not peer_fault:
            return False
        log.warn("refused a call to {message} from {peer}: {why}", message=message,
                 peer=self.peer_text(), why=why)
        return True

    def peer_text(self) -> str:
        """The peer's address for a log line."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        if host is not None:
            return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"
        return str(getattr(peer, "name", None) or "?")

    def peer_misbehaved(self, why: str) -> None:
        """Drop the connection because of what the peer sent; one log line says why."""
        log.warn("dropping the connection from {peer}: {why}", peer=self.peer_text(), why=why)
        self.drop_connection()

    _dropped = False

    def drop_connection(self) -> None:
        self._dropped = True
        if self.transport is not None:
            self.transport.abortConnection()
