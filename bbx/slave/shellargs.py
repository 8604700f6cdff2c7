"""A master's `shell` arguments made usable: argv, environment, signals, limits (docs/protocol.md §5.4).

Pure functions, no Twisted: what RunProcess (bbx/slave/runprocess.py) is built from.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
from typing import Any, Mapping

from bbx.pb.secrets import REDACTED, SecretNames

_ENV_REFERENCE = re.compile(r"\$\{([0-9a-zA-Z_]*)\}")


def text(value: Any) -> str:
    """Text from a master's value: Python 2 peers send bytes (docs/protocol.md §1.2)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def _is_obfuscated(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 3 and item[0] == "obfuscated"


def command_argv(command: list | tuple | str | bytes) -> tuple[list[str], list[str] | str, str]:
    """(argv to exec, what to show as argv, display line) for a master's `command`.

    A string runs via `/bin/sh -c`; a list is exec'd, its `('obfuscated', real, fake)` items
    run `real` and show `fake` (docs/protocol.md §5.4).
    """
    if isinstance(command, (str, bytes)):
        line = text(command)
        return ["/bin/sh", "-c", line], line, line
    if not isinstance(command, (list, tuple)) or not command:
        raise ValueError(f"shell: 'command' must be a string or a non-empty list, not {command!r}")
    real = [text(c[1]) if _is_obfuscated(c) else text(c) for c in command]
    fake = [text(c[2]) if _is_obfuscated(c) else text(c) for c in command]
    display = " ".join(shlex.quote(a) if a else '""' for a in fake)
    return real, fake, display


def obfuscated_words(command: Any) -> list[str]:
    """The real words of a command's ('obfuscated', real, fake) items: secrets by intent."""
    if not isinstance(command, (list, tuple)):
        return []
    return [text(c[1]) for c in command if _is_obfuscated(c)]


def build_environment(requested: Mapping[str, Any] | None, base: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: `base` (the slave's) changed as the master asks (docs/protocol.md §5.4).

    List values are joined with os.pathsep, None deletes, `${VAR}` expands from `base`, and
    PYTHONPATH keeps the slave's own PYTHONPATH after the requested one. Unlike the worker we
    do not append an empty entry when the slave has no PYTHONPATH: a trailing ':' would put
    the current directory on the child's Python path.
    """
    env = dict(base)
    if not requested:
        return env
    if not isinstance(requested, Mapping):
        raise ValueError(f"shell: 'env' must be a dictionary, not {type(requested).__name__}")
    wanted: dict[str, Any] = {}
    for key, value in requested.items():
        key = text(key)
        if isinstance(value, (list, tuple)):
            value = os.pathsep.join(text(v) for v in value)
        elif isinstance(value, bytes):
            value = text(value)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"shell: env value for {key!r} must be a string or a list, not {value!r}")
        wanted[key] = value
    if wanted.get("PYTHONPATH") is not None and base.get("PYTHONPATH"):
        wanted["PYTHONPATH"] += os.pathsep + "${PYTHONPATH}"

    def expand(match: re.Match) -> str:
        return base.get(match.group(1), "")

    for key, value in wanted.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _ENV_REFERENCE.sub(expand, value)
    return env


def environment_header(env: Mapping[str, str], names: SecretNames = SecretNames()) -> str:
    """The worker's " environment:" header, values of secret-looking names redacted."""
    lines = [" environment:\n"]
    for name in sorted(env):
        lines.append(f"  {name}={REDACTED if name in names else env[name]}\n")
    return "".join(lines)


def signal_number(name: Any) -> int:
    """'KILL', 'SIGKILL', 9 -> 9; ValueError for anything that is not a signal."""
    if isinstance(name, int) and not isinstance(name, bool):
        return signal.Signals(name).value
    word = text(name).upper()
    try:
        return signal.Signals[word if word.startswith("SIG") else "SIG" + word].value
    except KeyError:
        raise ValueError(f"shell: unknown signal {name!r} (use a name such as 'KILL' or 'TERM')") from None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def seconds_text(value: float) -> str:
    return f"{value} {'sec' if value == 1 else 'secs'}"


def logfile_specs(logfiles: Any) -> list[tuple[str, str, bool]]:
    """[(log name, file name, follow)] from a master's `logfiles` argument."""
    if not logfiles:
        return []
    if not isinstance(logfiles, Mapping):
        raise ValueError("shell: 'logfiles' must map a log name to a filename or {filename, follow}")
    specs = []
    for name, value in logfiles.items():
        follow = False
        if isinstance(value, Mapping):
            if "filename" not in value:
                raise ValueError(f"shell: logfile {name!r} has no 'filename'")
            follow = bool(value.get("follow", False))
            value = value["filename"]
        specs.append((text(name), text(value), follow))
    return specs


def seconds(name: str, value: Any) -> float | None:
    """Seconds from a master's argument (None stays None); ValueError unless finite and >= 0."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"shell: {name!r} must be a number of seconds >= 0, not {value!r}")
    return int(number) if number == int(number) else number


def positive(name: str, value: Any) -> float | None:
    """Seconds from a master's limit; Buildbot treats 0 (and less) and None alike as 'no limit'."""
    try:
        if value is not None and not isinstance(value, bool) and float(value) <= 0:
            return None
    except (TypeError, ValueError):
        pass
    return seconds(name, value) or None
