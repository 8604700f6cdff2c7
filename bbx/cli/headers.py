"""Which header lines a terminal shows by default: the command and its directory, yes; the
environment dump and Buildbot's bookkeeping lines, no (`--verbose` shows all of them).

A worker's shell header (bbx's and buildbot-worker's alike, docs/protocol.md §5.4) is
  make check
   in dir /b/linux/build (timeout 1200 s)
   watching logfiles {}
   argv: ['make', 'check']
   environment:
    HOME=/home/b
    ...
   using PTY: False
and, at the end, `elapsedTime=0.52`. The slave may split or join these lines between update
calls however its batching falls, so the filter works line by line and remembers whether it
is inside the environment block. Only display is filtered: the store keeps every line and
`bbx log` prints them all.
"""

from __future__ import annotations

import re

# Bookkeeping lines: one space, then one of these (Buildbot's own wording).
_BOOKKEEPING = re.compile(
    r"^ (watching logfiles |argv: |using PTY: |writing \d+ bytes to stdin)"
    r"|^elapsedTime=[0-9.]+$")
_ENVIRONMENT_START = " environment:"
_ENVIRONMENT_LINE = "  "  # its NAME=value lines are indented by two spaces
# Starts of hidden lines: a piece that ends while it is still a prefix of one of these is held
# until the rest of its line arrives (a cut can fall anywhere).
_HIDDEN_STARTS = (" watching logfiles ", " argv: ", " using PTY: ", " writing ",
                  _ENVIRONMENT_START, "elapsedTime=")


class HeaderFilter:
    """Feed it header text as it arrives; it returns the part a terminal should show.

    A line cut between two pieces is classified by its start, and its rest follows that
    decision; a piece too short to tell (a prefix of a hidden line's start) waits for more.
    """

    def __init__(self) -> None:
        self._in_environment = False
        self._continuing: bool | None = None  # shown? for a line whose start came earlier
        self._held = ""

    def feed(self, text: str) -> str:
        out = []
        text, self._held = self._held + text, ""
        for piece in text.splitlines(keepends=True):
            if (self._continuing is None and not piece.endswith("\n")
                    and self._undecided(piece)):
                self._held = piece
                break
            if self._continuing is not None:
                shown = self._continuing
            else:
                shown = self._shown(piece.rstrip("\n"))
            self._continuing = None if piece.endswith("\n") else shown
            if shown:
                out.append(piece)
        return "".join(out)

    def _undecided(self, piece: str) -> bool:
        if self._in_environment and piece in (" ", ""):
            return True
        return any(start.startswith(piece) for start in _HIDDEN_STARTS)

    def _shown(self, line: str) -> bool:
        if self._in_environment:
            if line.startswith(_ENVIRONMENT_LINE):
                return False
            self._in_environment = False
        if line.rstrip() == _ENVIRONMENT_START:
            self._in_environment = True
            return False
        return not _BOOKKEEPING.match(line)
