"""What every slave command is: built from the master's arguments, started, maybe interrupted.

A command reports progress only through `updates.add(key, value)` (an UpdateBatcher, see
bbx/pb/updates.py); the slave-side builder owns the batcher, flushes it and then calls the
master's `complete`. The contract:

- `__init__` validates the arguments and raises at once (ValueError / KeyError) when they are
  missing or malformed — the master gets that as the error reply to `startCommand`
  (docs/protocol.md §3.2).
- `start()` returns a Deferred that fires (with anything) once the command has sent its last
  update, `rc` included; it errbacks when the command could not run at all, and the master
  then gets `complete(failure)` (docs/protocol.md §5.2).
- `interrupt(why)` asks a running command to stop soon; `start()`'s Deferred still fires.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet import defer
from twisted.spread import pb

from bbx.pb.secrets import SecretNames


class UnknownCommand(pb.Error):
    """The master asked for a command this slave does not have."""


@dataclass(frozen=True)
class CommandContext:
    """What the slave gives its builders and commands beyond the master's arguments.

    `slave_name` (for messages), `allowed` (canonical command names, None = all),
    `secret_names` (whose values are redacted), `containment` (bbx/slave/containment.py, or
    None: processes found by session, group, cookie and pipes only).
    """

    slave_name: str = "this slave"
    allowed: tuple[str, ...] | None = None
    secret_names: SecretNames = SecretNames()
    containment: Any = None


DEFAULT_CONTEXT = CommandContext()


class Command:
    """One command run for the master. Subclasses set `name` and `required` and override start."""

    name: str = ""
    required: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        reactor,
        builder_dir: str,
        command_id: str,
        args: Mapping[str, Any],
        updates,
        context: CommandContext = DEFAULT_CONTEXT,
    ) -> None:
        missing = [a for a in self.required if a not in args]
        if missing:
            raise ValueError(f"{self.name}: missing required argument(s): {', '.join(missing)}")
        self.reactor = reactor
        self.builder_dir = builder_dir
        self.command_id = command_id
        self.args = dict(args)
        self.updates = updates
        self.context = context
        self.interrupted = False
        self.setup(self.args)

    def setup(self, args: dict) -> None:
        """Check and keep the arguments; raise ValueError for bad ones."""

    def start(self) -> defer.Deferred:
        raise NotImplementedError

    def interrupt(self, why: str) -> None:
        self.interrupted = True

    def resolve(self, path: str | None) -> str:
        """A master-given path: relative ones resolve under the builder dir, `~` expands."""
        path = os.path.expanduser(path or "")
        return os.path.normpath(os.path.join(self.builder_dir, path))
