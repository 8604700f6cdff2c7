"""Secret values replaced in what a command sends, before the bytes leave the slave.

`Secrets` holds the values to hide: those of the child's environment variables whose names
look secret (bbx/pb/secrets.py, plus the slave's `--redact` globs; variables the master sent
count too) and the real words of `('obfuscated', real, fake)` command items. Each occurrence in
stdout, stderr, logfiles and headers becomes REDACTED.

Output arrives in reads of any size, so a value may be cut in two. `StreamRedactor` keeps back
the end of a read when it could be the beginning of a secret — never more than the longest
secret — and releases it with the next read, or when told to (the runner does so after
HOLD_DELAY, so a pause in the output never delays it for long).
"""

from __future__ import annotations

import codecs
import re
from typing import Iterable, Mapping

from bbx.pb.secrets import REDACTED, SecretNames, worth_redacting

_REPLACEMENT = REDACTED.encode()

# How long the few bytes that may start a secret wait for the rest before they are sent as
# they are. Long enough to join two write() calls of one line (a secret cut at a stdio buffer
# boundary arrives microseconds apart), short next to the 100 ms flush rule
# (bbx/pb/updates.py FLUSH_DELAY).
HOLD_DELAY = 0.02


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class Secrets:
    """A set of secret byte strings and the one pattern that finds any of them."""

    def __init__(self, values: Iterable[str | bytes] = ()) -> None:
        found = set()
        for value in values:
            text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
            if worth_redacting(text):
                # Without surrounding white space: `echo $TOKEN` prints a value read from a file
                # without its trailing newline.
                found.add(_encode(text.strip()))
        # Longest first: where one secret starts another, the longer one wins.
        self.values: tuple[bytes, ...] = tuple(sorted(found, key=lambda v: (-len(v), v)))
        self.longest = max((len(v) for v in self.values), default=0)
        self._pattern = re.compile(b"|".join(re.escape(v) for v in self.values)) if found else None
        firsts = sorted({v[:1] for v in self.values})
        self._first_bytes = re.compile(b"[" + b"".join(re.escape(f) for f in firsts) + b"]") \
            if firsts else None

    @classmethod
    def from_environment(cls, env: Mapping[str, str], names: SecretNames,
                         extra: Iterable[str] = ()) -> "Secrets":
        """The values of `env` whose names hold secret values (SecretNames.value_is_secret),
        plus `extra` values."""
        return cls([value for name, value in env.items() if names.value_is_secret(name)] + list(extra))

    def __bool__(self) -> bool:
        return bool(self.values)

    def bytes(self, data: bytes) -> bytes:
        """`data` with every whole secret replaced."""
        if self._pattern is None or not any(v in data for v in self.values):
            return data
        return self._pattern.sub(_REPLACEMENT, data)

    def text(self, text: str) -> str:
        """`text` with every whole secret replaced (for headers and info, which come whole)."""
        if self._pattern is None:
            return text
        data = _encode(text)
        cleaned = self.bytes(data)
        return text if cleaned is data else cleaned.decode("utf-8", "surrogateescape")

    def hold_start(self, data: bytes, low: int) -> int:
        """The first index >= `low` from which `data` to its end is a proper prefix of a
        secret (what must wait for more bytes), or len(data) if there is none."""
        if self._first_bytes is None:
            return len(data)
        size = len(data)
        pos = max(low, size - self.longest + 1)
        while True:
            m = self._first_bytes.search(data, pos)
            if m is None:
                return size
            pos = m.start()
            tail = data[pos:]
            if any(len(v) > len(tail) and v.startswith(tail) for v in self.values):
                return pos
            pos += 1

    def matches(self, data: bytes):
        return self._pattern.finditer(data) if self._pattern is not None else iter(())


class StreamRedactor:
    """Redacts one output stream read by read; see the module docstring.

    `feed(data)` returns what may be sent now; `pending` says whether bytes are held back;
    `flush()` returns them (redacted as far as they go) at a pause or at the end.
    """

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._held = b""

    @property
    def pending(self) -> bool:
        return bool(self._held)

    def feed(self, data: bytes) -> bytes:
        secrets = self.secrets
        buf = self._held + data if self._held else data
        if not any(v in buf for v in secrets.values):
            hold = secrets.hold_start(buf, 0)
        else:
            out = []
            pos = 0
            hold = secrets.hold_start(buf, 0)
            for m in secrets.matches(buf):
                if m.start() >= hold:
                    break  # it may yet turn out to be the start of a longer secret
                out.append(buf[pos:m.start()])
                out.append(_REPLACEMENT)
                pos = m.end()
                if pos > hold:  # a whole secret ran into the held tail: it is final
                    hold = secrets.hold_start(buf, pos)
            if out:
                out.append(buf[pos:hold])
                self._held = buf[hold:]
                return b"".join(out)
        self._held = buf[hold:]
        return buf[:hold] if hold < len(buf) else buf

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self.secrets.bytes(held) if held else b""


class TextStream:
    """One output stream's bytes as text to send: secrets replaced, UTF-8 decoded as it comes
    (a character cut between reads waits for its other bytes; invalid bytes become U+FFFD).

    `feed(data)` -> text to send now; `pending` says whether bytes wait for a possible secret;
    `release()` -> those bytes (at a pause); `close()` -> everything left (at the end).
    """

    def __init__(self, secrets: Secrets | None = None) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._redactor = StreamRedactor(secrets) if secrets else None

    @property
    def pending(self) -> bool:
        return self._redactor is not None and self._redactor.pending

    def feed(self, data: bytes) -> str:
        if self._redactor is not None:
            data = self._redactor.feed(data)
        return self._decode(data) if data else ""

    def release(self) -> str:
        if self._redactor is None:
            return ""
        data = self._redactor.flush()
        return self._decode(data) if data else ""

    def close(self) -> str:
        return self.release() + self._decode(b"", True)
