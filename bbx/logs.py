"""Logging for both roles: a human line or a JSON object per event, to a file that rotates by
size (and to the terminal in the foreground).

    2026-12-01 21:33:12.262 listening on tcp:host=127.0.0.1:port=9989
    2026-12-01 21:33:14.001 [warn] refused login as 'x' from 127.0.0.1:5123: unknown name
    {"time": "2026-12-01T21:33:12.262+00:00", "ts": 1796161992.262, "level": "info",
     "namespace": "bbx.master.service", "message": "listening on ...", "endpoint": "..."}

Log files are private (0600): they name slaves, peers and commands. Rotation is Twisted's
LogFile: past `max_bytes` the file becomes NAME.1 (NAME.1 becomes NAME.2, ...), keeping
`backups` old files. The secrets rules hold in both formats: no code logs a password, and a
JSON event field whose name looks secret (bbx/pb/secrets.py) is masked, as `bbx info` masks
environment values.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

FORMATS = ("text", "json")
MASK = "********"
# Event keys Twisted adds for itself; JSON lines carry the rest (the event's own fields).
_TWISTED_KEYS = ("log_", "message", "format", "isError", "system", "why", "failure")


@dataclass(frozen=True)
class LogOptions:
    """How a role logs: --log-format, --log-max-bytes (0 = never rotate), --log-backups."""

    format: str = "text"
    max_bytes: int = 0
    backups: int = 5

    def check(self) -> None:
        """ValueError naming the option when a value is out of range."""
        if self.format not in FORMATS:
            raise ValueError(f"--log-format must be text or json, not {self.format!r}")
        if self.max_bytes < 0:
            raise ValueError(f"--log-max-bytes must be >= 0 (0 = never rotate), not {self.max_bytes}")
        if self.backups < 1:
            raise ValueError(f"--log-backups must be >= 1, not {self.backups}")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def text_line(event) -> str | None:
    """One human line: local time to the millisecond, [level] unless info, the message."""
    from twisted.logger import LogLevel, eventAsText

    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    level = event.get("log_level")
    tag = "" if level in (None, LogLevel.info, LogLevel.debug) else f"[{level.name}] "
    return f"{_stamp(event.get('log_time', time.time()))} {tag}{text}\n"


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def json_line(event) -> str | None:
    """One JSON object: time, ts, level, namespace, message, and the event's own fields
    (secret-looking names masked)."""
    from twisted.logger import eventAsText

    from bbx.pb.secrets import is_secret_name

    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    t = event.get("log_time", time.time())
    level = event.get("log_level")
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}+00:00",
        "ts": round(t, 3),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": text,
    }
    for key, value in event.items():
        if key.startswith(_TWISTED_KEYS) or key in record:
            continue
        record[key] = MASK if is_secret_name(key) else _plain(value)
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def open_log(path: str, options: LogOptions):
    """The role's log file, created 0600, rotating past options.max_bytes."""
    from twisted.python.logfile import LogFile

    directory, name = os.path.split(os.path.abspath(path))
    return LogFile(name, directory, rotateLength=options.max_bytes or None, defaultMode=0o600,
                   maxRotatedFiles=options.backups)


class _Lines:
    """The one log observer: keeps events at or above `level`, formats each once, and writes
    the line to every file (the log file, and stdout in the foreground), flushing each.

    Twisted's FilteringLogObserver around one FileLogObserver per file would filter and
    format every event once per file; a role logs a few events per build, so that doubled
    the cost of its logging in the foreground (bench/builds.py --profile).
    """

    def __init__(self, files, formatter, level) -> None:
        self.files = files
        self.formatter = formatter
        self.level = level

    def __call__(self, event) -> None:
        level = event.get("log_level")
        if level is not None and level < self.level:
            return
        line = self.formatter(event)
        if not line:
            return
        for f in self.files:
            f.write(line)
            f.flush()


def start(path: str, options: LogOptions, *, console: bool) -> object:
    """Log (info and up) to `path` (and stdout when `console`) in options.format; returns the
    log file (flushed on every event; closed at exit)."""
    from twisted.logger import ILogObserver, LogLevel, globalLogBeginner
    from zope.interface import directlyProvides

    options.check()
    log_file = open_log(path, options)
    formatter = json_line if options.format == "json" else text_line
    observer = _Lines([log_file, sys.stdout] if console else [log_file], formatter,
                      LogLevel.info)
    directlyProvides(observer, ILogObserver)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return log_file
