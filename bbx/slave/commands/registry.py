"""Command name -> class, and the version table a slave advertises (PROTOCOL.md §5.4).

Every command is advertised at COMMAND_VERSION (3.3), so modern masters use modern argument
names and features (§5.5). Buildbot's snake_case aliases are listed too.
"""

from __future__ import annotations

from bbx.pb.dialect import COMMAND_VERSION

from .base import Command, UnknownCommand

_ALIASES = {
    "upload_file": "uploadFile",
    "upload_directory": "uploadDirectory",
    "download_file": "downloadFile",
}


def _classes() -> dict[str, type[Command]]:
    from . import fs, shell, transfer

    table: dict[str, type[Command]] = {}
    for module in (shell, fs, transfer):
        for cls in getattr(module, "COMMANDS", ()):
            table[cls.name] = cls
    for alias, name in _ALIASES.items():
        if name in table:
            table[alias] = table[name]
    return table


def lookup(name: str) -> type[Command]:
    """The class for `name`; UnknownCommand (a pb.Error, so the master sees it) otherwise."""
    cls = _classes().get(name)
    if cls is None:
        raise UnknownCommand(f"unrecognized command {name!r}")
    return cls


def command_table() -> dict[str, str]:
    """What `getCommands` returns and `worker_commands` holds: name -> version."""
    return {name: COMMAND_VERSION for name in _classes()}
