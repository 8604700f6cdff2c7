"""Where a running command's output goes: a terminal (with a live status line) or a pipe.

`bbx run` and `bbx build` paint the slave's update envelopes through one of these sinks;
`paint_updates` is the loop both use. This is the CLI's bulk-output path (bench/stream.py):
no rich work and no per-line work per chunk.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from .masks import mask_header

if TYPE_CHECKING:
    from rich.console import Console
    from rich.style import Style
    from rich.text import Text


class PipeOutput:
    """Command output for a non-terminal stdout: the command's stdout byte for byte on our
    stdout, everything else on stderr. No rich work per chunk: this path carries bulk output.
    """

    def __init__(self, err: Console, stdout=None, stderr=None):
        self.err = err
        self._out = stdout if stdout is not None else sys.stdout.buffer
        self._err = stderr if stderr is not None else sys.stderr.buffer
        self.nbytes = 0
        self.broken_pipe = False

    def stdout(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        self.nbytes += len(data)
        if self.broken_pipe:
            return
        try:
            # A blocking write is the flow control we want: while the reader is slow we do
            # not answer the master's update call, so the master, then the slave, slow down.
            self._out.write(data)
            self._out.flush()
        except BrokenPipeError:
            self.broken_pipe = True

    def stderr(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        self.nbytes += len(data)
        self._err.write(data)
        self._err.flush()

    def header(self, text: str) -> None:
        if not self.err.is_terminal:  # plain text: no rich work on the bulk path
            self._line(text)
            return
        from rich.text import Text

        self.err.print(Text(text.rstrip("\n"), style="dim"), soft_wrap=True, highlight=False)

    def _line(self, text: str) -> None:
        self._err.write((text.rstrip("\n") + "\n").encode("utf-8", "surrogateescape"))
        self._err.flush()

    def status(self, text: Text) -> None:
        """No live status line in a pipe."""

    def section(self, renderable) -> None:
        """A step boundary (a rule): on stderr, between the command's output lines."""
        self.finish(renderable)

    def finish(self, summary) -> None:
        """The last line (or a rule): plain when stderr is no terminal either."""
        if not self.err.is_terminal:
            plain = getattr(summary, "plain", None)
            if isinstance(summary, str) or plain is not None:
                self._line(summary if isinstance(summary, str) else plain)
                return
        self.err.print(summary, soft_wrap=True, highlight=False)


class TerminalOutput:
    """Command output for a terminal: stdout as is, stderr red, headers dim, and a status line
    redrawn at the bottom whenever the output sits at the start of a line.

    The status line is erased before each piece of output and only drawn after a newline, so
    partial lines and '\\r' progress bars of the command are never mixed with it.
    """

    def __init__(self, console: Console):
        from rich.style import Style

        self.console = console
        self._file = console.file
        self.nbytes = 0
        self.broken_pipe = False
        self._at_line_start = True
        self._status_shown = False
        self._last_status: Text | None = None
        color = console.color_system is not None and not console.no_color
        self._red = self._codes(Style(color="red")) if color else ("", "")
        self._dim = self._codes(Style(dim=True)) if color else ("", "")

    @staticmethod
    def _codes(style: Style) -> tuple[str, str]:
        start, _, end = style.render("\0").partition("\0")
        return start, end

    def _write(self, text: str, codes: tuple[str, str] = ("", "")) -> None:
        self._erase_status()
        if codes[0]:
            # Close the style before a final newline so a partial next line starts plain.
            body, newline = (text[:-1], "\n") if text.endswith("\n") else (text, "")
            text = f"{codes[0]}{body}{codes[1]}{newline}"
        self._file.write(text)
        self._at_line_start = text.endswith("\n")
        if self._at_line_start and self._last_status is not None:
            self._draw_status()
        self._file.flush()

    def stdout(self, text: str) -> None:
        self.nbytes += len(text.encode("utf-8", "surrogateescape"))
        self._write(text)

    def stderr(self, text: str) -> None:
        self.nbytes += len(text.encode("utf-8", "surrogateescape"))
        self._write(text, self._red)

    def header(self, text: str) -> None:
        if not self._at_line_start:
            text = "\n" + text
        self._write(text if text.endswith("\n") else text + "\n", self._dim)

    def status(self, text: Text) -> None:
        self._last_status = text
        if self._at_line_start:
            self._erase_status()
            self._draw_status()
            self._file.flush()

    def clear_status(self) -> None:
        """Take the status line away (the wait it described is over)."""
        self._erase_status()
        self._last_status = None
        self._file.flush()

    def _draw_status(self) -> None:
        width = max(10, self.console.width - 1)
        plain = self._last_status.plain[:width]
        self._file.write(f"{self._dim[0]}{plain}{self._dim[1]}" if self._dim[0] else plain)
        self._status_shown = True

    def _erase_status(self) -> None:
        if self._status_shown:
            self._file.write("\r\x1b[2K")
            self._status_shown = False

    def section(self, renderable) -> None:
        """A step boundary (a rule), on a line of its own."""
        self._erase_status()
        if not self._at_line_start:
            self._file.write("\n")
            self._at_line_start = True
        self._file.flush()
        self.console.print(renderable, highlight=False)

    def finish(self, summary) -> None:
        self._erase_status()
        if not self._at_line_start:
            self._file.write("\n")
        self._file.flush()
        self.console.print(summary, soft_wrap=True, highlight=False)


def make_sink(out: Console, err: Console, json: bool):
    """The sink for a session: None with --json, TerminalOutput on a terminal, else PipeOutput."""
    if json:
        return None
    return TerminalOutput(out) if out.is_terminal else PipeOutput(err)


def note(sink, err: Console, text: str) -> None:
    """One 'bbx: ...' line between the command's output (or on stderr with --json)."""
    if sink is not None:
        sink.header(f"bbx: {text}\n")
    else:
        err.print(f"bbx: {text}", highlight=False, soft_wrap=True, markup=False)


def header_filter(sink, verbose: bool):
    """The HeaderFilter for a session's headers: on a terminal unless --verbose, else None
    (a pipe keeps every header line on stderr, as before)."""
    if verbose or not isinstance(sink, TerminalOutput):
        return None
    from .headers import HeaderFilter

    return HeaderFilter()


def paint_updates(sink, updates, show_secrets: bool,
                  other: Callable[[str, object], None] | None = None, headers=None) -> None:
    """Paint one received update envelope; keys that are not output go to `other`.
    `headers` (a HeaderFilter, or None for all) decides which header lines are shown."""
    from bbx.pb.updates import iter_updates

    for key, value in iter_updates(updates):
        if key == "stdout":
            sink.stdout(value)
        elif key == "stderr":
            sink.stderr(value)
        elif key == "header":
            text = str(value) if headers is None else headers.feed(str(value))
            if text:
                sink.header(mask_header(text, show_secrets))
        elif key == "log" and isinstance(value, (list, tuple)) and len(value) == 2:
            sink.header(f"[{value[0]}] {value[1]}")
        elif other is not None:
            other(key, value)
