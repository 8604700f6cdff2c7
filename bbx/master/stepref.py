"""StepRef: what a slave gets as the stepRef of startCommand, in front of one RemoteCommand.

The SlaveLink makes one per command (bbx/master/link.py). It is where a Python 2 peer's update
envelopes become text, once (docs/protocol.md §1.2, §5.1): a Buildbot 0.8 slave sends its keys and
output as raw byte strings, in chunks that are not line- or character-aligned, so each stream
gets an incremental UTF-8 decoder and a character cut between two chunks arrives whole.
Envelopes from Python 3 peers pass on untouched (nothing re-encoded on the way).
"""

from __future__ import annotations

import codecs
from typing import Any

from twisted.spread import pb

from bbx.pb import dialect
from bbx.pb.updates import TEXT_KEYS


class StepRef(pb.Referenceable):
    """The stepRef a slave gets in startCommand, in front of one RemoteCommand.

    The slave calls `update(updates)` — a list of `[{key: value}, 0]` pairs — and gets back
    what the command answers (0, or a Deferred firing 0 once its observers took the envelope),
    then `complete(failure=None)` — None or a CopyableFailure — and gets None. Envelopes with
    Python 2 byte strings are turned into str here; others pass on unchanged.
    """

    def __init__(self, command):
        self.command = command
        self._decoders: dict[str, Any] = {}  # stream key -> incremental UTF-8 decoder

    def remote_update(self, updates):
        """See the class docstring: a list of update pairs; answers 0 or a Deferred of 0."""
        if dialect.has_bytes(updates):
            updates = self._text(updates)
        return self.command.remote_update(updates)

    def remote_complete(self, failure=None):
        """See the class docstring: None or a failure; answers None."""
        tail = self._flush()
        if tail:
            self.command.remote_update(tail)
        return self.command.remote_complete(failure)

    def _decode(self, stream: str, value: bytes, final: bool = False) -> str:
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(value, final)

    def _text(self, updates) -> list:
        out = []
        for element in updates:
            data = element[0] if isinstance(element, (list, tuple)) and element else element
            if not isinstance(data, dict):
                continue
            pairs = {}
            for key, value in data.items():
                key = dialect.plain(key)
                if isinstance(value, bytes) and key in TEXT_KEYS:
                    value = self._decode(key, value)
                elif key == "log" and isinstance(value, (list, tuple)) and len(value) == 2:
                    name = dialect.plain(value[0])
                    text = value[1]
                    if isinstance(text, bytes):
                        text = self._decode(f"log:{name}", text)
                    value = [name, text]
                else:
                    value = dialect.plain(value)
                pairs[key] = value
            out.append([pairs, 0])
        return out

    def _flush(self) -> list:
        """What the decoders still hold (a truncated character at the very end), as updates."""
        tail = []
        for stream, decoder in self._decoders.items():
            text = decoder.decode(b"", True)
            if text:
                key, _, name = stream.partition(":")
                tail.append([{key: [name, text] if key == "log" else text}, 0])
        self._decoders.clear()
        return tail
