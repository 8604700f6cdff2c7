"""Options both `bbx master start` and `bbx slave start` take: logs, HTTP, the wait display.

--daemon passes them on to the background child (`child_args`).
"""

from typing import Annotated

import typer

from .errors import UsageError

_PANEL = "Logging and monitoring"

LogFormatOption = Annotated[str, typer.Option(
    "--log-format", metavar="text|json", rich_help_panel=_PANEL,
    help="Log lines for people (text) or one JSON object a line for log shippers (json).")]
LogMaxBytesOption = Annotated[int, typer.Option(
    "--log-max-bytes", min=0, rich_help_panel=_PANEL,
    help="Rotate the log file once it is this big (0 = never; e.g. 10000000).")]
LogBackupsOption = Annotated[int, typer.Option(
    "--log-backups", min=1, rich_help_panel=_PANEL,
    help="Rotated log files to keep (LOG.1 ... LOG.N).")]
HttpOption = Annotated[str | None, typer.Option(
    "--http", metavar="ENDPOINT", rich_help_panel=_PANEL,
    help="Serve /metrics (Prometheus) and /healthz on this server endpoint, "
         "e.g. tcp:9100:interface=127.0.0.1.")]


def log_options(fmt: str, max_bytes: int, backups: int):
    """The LogOptions for these flags; a bad value is one UsageError line."""
    from bbx.logs import LogOptions

    options = LogOptions(format=fmt, max_bytes=max_bytes, backups=backups)
    try:
        options.check()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return options


def check_http(http: str | None, where: str = "--http") -> None:
    if not http:
        return
    from twisted.internet import reactor

    from bbx.pb.endpoints import server_endpoint

    try:
        server_endpoint(reactor, http)
    except ValueError as e:
        raise UsageError(f"{where}: {e}; write e.g. --http tcp:9100:interface=127.0.0.1") from None


def child_args(fmt: str, max_bytes: int, backups: int, http: str | None) -> list[str]:
    """The same options, as arguments for the --daemon child."""
    args = ["--log-format", fmt, "--log-max-bytes", str(max_bytes), "--log-backups", str(backups)]
    return args + (["--http", http] if http else [])


class Waiting:
    """A spinner with a line of text on a terminal while a command waits (for a slave to
    attach, a master to listen, a build to start); nothing when stderr is not a terminal."""

    def __init__(self, text: str):
        import sys

        self.text = text
        self._status = None
        if sys.stderr.isatty():
            from rich.console import Console

            self._status = Console(stderr=True).status(text)

    def __enter__(self):
        if self._status is not None:
            self._status.__enter__()
        return self

    def update(self, text: str) -> None:
        if self._status is not None and text != self.text:
            self.text = text
            self._status.update(text)

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False
