"""Reading a TOML file so that every problem is one line naming file, line, key and fix.

tomllib reports syntax errors but keeps no line numbers for the values it returns, so
`Locator` finds a key's line in the raw text again, and `Loader` checks values with messages
that point there. bbx/master/config.py uses them for master.toml.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Iterable


class ConfigError(Exception):
    """master.toml is missing, malformed or inconsistent; str(error) says where and how to fix it."""


def parse_toml(text: str, path: Path) -> dict:
    """tomllib.loads, with a syntax error as a ConfigError naming `path`, line and column."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python < 3.14 keeps line and column only in the message: "... (at line L, column C)".
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = getattr(e, "lineno", None) or (int(found.group(1)) if found else None)
        col = getattr(e, "colno", None) or (int(found.group(2)) if found else None)
        msg = getattr(e, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(e))
        at = f"{path}:{line}:{col}" if line else str(path)
        raise ConfigError(f"{at}: TOML syntax error: {msg}; fix the syntax at that spot") from None
    return data


class Locator:
    """Finds the line of a key in the raw text, for error messages (tomllib gives none)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self._headers: dict[str, list[int]] | None = None

    def header_lines(self, header: str) -> list[int]:
        """The (0-based) line numbers of every `header` line ("[[slaves]]"), in order.

        Indexed once: a 10,000-slave master.toml looked up per builder and step made loading
        it take seconds."""
        if self._headers is None:
            self._headers = {}
            pattern = re.compile(r"^\s*(\[\[[^\[\]]*\]\]|\[[^\[\]]*\])\s*(#.*)?$")
            for number, line in enumerate(self.lines):
                if "[" in line:
                    m = pattern.match(line)
                    if m:
                        self._headers.setdefault(m.group(1), []).append(number)
        return self._headers.get(header, [])

    def _section_start(self, header: str, index: int) -> int | None:
        starts = self.header_lines(header)
        return starts[index] if 0 <= index < len(starts) else None

    def line(self, header: str | None, key: str | None = None, index: int = 0,
             value: str | None = None) -> int | None:
        start = 0
        if header is not None:
            found = self._section_start(header, index)
            if found is None:
                return None
            start = found
        if key is None:
            return start + 1
        key_re = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for number in range(start + (1 if header else 0), len(self.lines)):
            line = self.lines[number]
            if header is not None and number > start and re.match(r"^\s*\[", line):
                break
            if key_re.match(line) or (value is not None and value in line):
                return number + 1
        return start + 1 if header else None


class Loader:
    """Checks the values of one parsed file; `fail` builds the ConfigError to raise."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.where = Locator(text)

    def fail(self, line: int | None, key: str, problem: str, fix: str) -> ConfigError:
        at = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{at}: {key}: {problem}; {fix}")

    def string(self, table: dict, key: str, header: str, index: int = 0, *, required=True,
               default: str | None = None, label: str | None = None) -> str:
        label = label or key
        if key not in table:
            if required:
                raise self.fail(self.where.line(header, None, index), label, "missing",
                                f"add {key} = \"...\" under {header}")
            return default  # type: ignore[return-value]
        value = table[key]
        if not isinstance(value, str):
            raise self.fail(self.where.line(header, key, index), label,
                            f"must be a string, not {type(value).__name__}", "quote the value")
        if not value.strip():
            raise self.fail(self.where.line(header, key, index), label, "is empty",
                            "give it a non-empty value")
        return value

    def positive(self, table: dict, key: str, header: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        # `not 0 < value < inf` also refuses nan (every comparison with it is false).
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise self.fail(self.where.line(header, key), f"master.{key}",
                            f"must be a positive, finite number of seconds, not {value!r}",
                            f"set e.g. {key} = {int(default)}")
        return float(value)

    def count(self, table: dict, key: str, header: str, default: int, label: str,
              index: int = 0, minimum: int = 1) -> int:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(self.where.line(header, key, index), label,
                            f"must be a whole number >= {minimum}, not {value!r}",
                            f"set e.g. {key} = {max(default, minimum)}")
        return value

    def unknown(self, table: dict, known: Iterable[str], header: str, index: int = 0) -> None:
        for key in table:
            if key not in known:
                raise self.fail(self.where.line(header, key, index), f"{header} {key}",
                                "is not a known key",
                                f"remove it (known keys: {', '.join(sorted(known))})")

