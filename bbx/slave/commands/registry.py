"""Command name -> class, the version table a slave advertises, and its allow-list (docs/protocol.md §5.4).

Every command is advertised at COMMAND_VERSION (3.3), so modern masters use modern argument
names and features (§5.5). Buildbot's snake_case aliases are listed too. A slave created with
`--commands` advertises and accepts only those (an alias goes with its command).
"""

from __future__ import annotations

from typing import Iterable

from bbx.pb.dialect import COMMAND_VERSION

from . import ALIASES, canonical
from .base import Command, UnknownCommand


class CommandNotAllowed(UnknownCommand):
    """The slave exists and has the command, but its operator did not allow it (--commands)."""


def _classes() -> dict[str, type[Command]]:
    from . import fs, shell, transfer

    table: dict[str, type[Command]] = {}
    for module in (shell, fs, transfer):
        for cls in getattr(module, "COMMANDS", ()):
            table[cls.name] = cls
    for alias, name in ALIASES.items():
        if name in table:
            table[alias] = table[name]
    return table


def _allows(allowed: Iterable[str] | None, name: str) -> bool:
    return allowed is None or canonical(name) in allowed


def lookup(name: str, allowed: Iterable[str] | None = None, slave: str = "this slave") -> type[Command]:
    """The class for `name`; UnknownCommand or CommandNotAllowed (pb.Errors, so the master gets
    the one-line message as its startCommand error) otherwise."""
    cls = _classes().get(name)
    if cls is None:
        raise UnknownCommand(f"unrecognized command {name!r}")
    if not _allows(allowed, name):
        raise CommandNotAllowed(f"slave {slave} does not allow command {name!r} "
                                f"(allowed: {', '.join(sorted(allowed))})")
    return cls


def command_table(allowed: Iterable[str] | None = None) -> dict[str, str]:
    """What `getCommands` returns and `worker_commands` holds: name -> version, allowed ones."""
    return {name: COMMAND_VERSION for name in _classes() if _allows(allowed, name)}
