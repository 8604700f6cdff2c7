"""Slave-era (Buildbot 0.8) versus worker-era (Buildbot >= 0.9) naming, in one place.

Every difference between the two generations that bbx has to care about lives here
(docs/protocol.md §3.1, §4.1, §4.3, §5.5, §5.6, §9). The roles ask this module; they never
spell out an old or new name themselves.
"""

from __future__ import annotations

import enum
import os
from typing import Any, Mapping

# The version every bbx command advertises. Masters gate their argument names on
# >= 3.0 and their features on up to 3.3 (docs/protocol.md §5.5), so 3.3 takes every modern path.
COMMAND_VERSION = "3.3"

# The worker-era cut-over: a command version at or above this uses the new argument names.
WORKER_ERA_VERSION = (3, 0)


class Dialect(str, enum.Enum):
    """Which generation of the protocol a peer speaks."""

    WORKER = "worker"  # Buildbot >= 0.9 / buildbot-worker, and bbx itself
    SLAVE = "slave"  # Buildbot 0.8 buildslave

    @property
    def info_key_commands(self) -> str:
        return "worker_commands" if self is Dialect.WORKER else "slave_commands"


# The master's fallback chain for fetching a peer's info (docs/protocol.md §4.1 step 2.3).
INFO_METHOD = {Dialect.WORKER: "getWorkerInfo", Dialect.SLAVE: "getSlaveInfo"}
LEGACY_INFO_FALLBACKS = ("getCommands", "getVersion")

# The error type a peer raises for an unknown remote_* method; only this one means
# "try the older name" (docs/protocol.md §10.2 item 2).
NO_SUCH_METHOD = "twisted.spread.flavors.NoSuchMethod"

# Renamed command arguments: worker-era name -> slave-era name (docs/protocol.md §5.5).
_ARG_RENAMES = {
    "uploadFile": {"workersrc": "slavesrc"},
    "upload_file": {"workersrc": "slavesrc"},
    "uploadDirectory": {"workersrc": "slavesrc"},
    "upload_directory": {"workersrc": "slavesrc"},
    "downloadFile": {"workerdest": "slavedest"},
    "download_file": {"workerdest": "slavedest"},
}

# Master-side messages that differ by generation.
ATTACHED_MESSAGE = "attached"
PING_MESSAGE = "ping"
KEEPALIVE_MESSAGE = {Dialect.WORKER: "keepalive", Dialect.SLAVE: "Received keepalive from master"}
DUPLICATE_MESSAGE = "master got a duplicate connection"


def plain(value: Any) -> Any:
    """A value from a peer with Python 2's byte strings made str (docs/protocol.md §1.2).

    A Python 2 peer (every Buildbot 0.8) sends its `str` as raw bytes; a Python 3 peer sends
    str. Recurses into dicts (keys too), lists and tuples (as lists); undecodable bytes
    become U+FFFD, as Buildbot's own `decode` does not (it raises).
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def has_bytes(value: Any) -> bool:
    """True when `value` holds a byte string anywhere (a Python 2 peer's text)."""
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(has_bytes(k) or has_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_bytes(v) for v in value)
    return False


def parse_version(text: Any) -> tuple[int, ...]:
    """'3.3' -> (3, 3); anything unparsable -> (0,)."""
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def dialect_from_info(info: Mapping[str, Any], *, had_worker_info: bool) -> Dialect:
    """Decide a peer's dialect from what the attach sequence learned.

    A peer that answered getWorkerInfo is worker-era. Otherwise the command versions
    decide: any command at >= 3.0 means the peer understands the new argument names.
    """
    if had_worker_info:
        return Dialect.WORKER
    commands = info.get("worker_commands") or info.get("slave_commands") or {}
    if commands and max(parse_version(v) for v in commands.values()) >= WORKER_ERA_VERSION:
        return Dialect.WORKER
    return Dialect.SLAVE


def command_version(commands: Mapping[str, Any], name: str) -> tuple[int, ...] | None:
    """The version a peer advertises for one command, or None when it has no such command."""
    if name not in commands:
        return None
    return parse_version(commands[name])


def args_for_peer(name: str, args: Mapping[str, Any], commands: Mapping[str, Any]) -> dict:
    """Master side: rewrite one command's arguments for the peer that will run it.

    `commands` is the peer's advertised command table (name -> version). The gating
    follows what a Buildbot 4.3 master does (docs/protocol.md §5.4, §5.5).
    """
    out = dict(args)
    version = command_version(commands, name)
    if name == "shell":
        if version is None:
            out.setdefault("dir", out.get("workdir"))
        elif version < (2, 7):
            out.pop("usePTY", None)
        elif version < (3, 0):
            out["usePTY"] = "slave-config"
        if version is not None and version < (2, 15):
            out.pop("interruptSignal", None)
        if version is not None and version < (2, 16):
            out.pop("sigtermTime", None)
    renames = _ARG_RENAMES.get(name, {})
    if renames and (version is None or version < WORKER_ERA_VERSION):
        for new, old in renames.items():
            if new in out:
                out[old] = out.pop(new)
    return out


def args_from_master(name: str, args: Mapping[str, Any]) -> dict:
    """Slave side: accept either generation's argument names and values, return worker-era ones.

    - `slavesrc` / `slavedest` become `workersrc` / `workerdest`;
    - shell's `dir` becomes `workdir` when `workdir` is absent;
    - `usePTY="slave-config"` (0.8 masters' default) means False.
    """
    out = dict(args)
    for new, old in _ARG_RENAMES.get(name, {}).items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    if name == "shell":
        if "workdir" not in out and "dir" in out:
            out["workdir"] = out.pop("dir")
        if not isinstance(out.get("usePTY"), bool):
            out["usePTY"] = False
    return out


def system_name() -> str:
    """What a slave reports as `system` (os.name, as Buildbot does)."""
    return os.name
