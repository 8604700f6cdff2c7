"""RemoteCommand: the stepRef a slave reports one command's progress to.

The slave calls `update` with envelopes `[[{key: value}, 0], ...]` and finally `complete`
(docs/protocol.md §3.4, §5.1, §5.2). The command keeps what the master needs (rc), appends the
text to the store when it has a StoreLog, and hands the very same envelope to its observers
— a watching CLI, a build's watchers — so nothing is re-encoded on the way.

Order of an update, and why: the text is appended to the store, the store's `written()` is
awaited, and only then do observers see the envelope and the slave get its answer. So a byte
any operator saw is already committed (a SIGKILLed master loses nothing anyone saw), and a
slow disk or a slow CLI slows the slave (flow control end to end).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import Interface, implementer

from bbx.pb.secrets import mask_header
from bbx.pb.updates import iter_updates

from . import metrics
from .clients import ClientRef

log = Logger()

# Command ids are str of a process-global counter, as Buildbot's master does (docs/protocol.md §4.2).
_command_ids = itertools.count()


def next_command_id() -> str:
    return str(next(_command_ids))


class ICommandObserver(Interface):
    """Something that watches one command: a watching CLI, the store, a build step."""

    def update(updates):
        """Receive one update envelope as the slave sent it; return None or a Deferred.

        A Deferred delays the answer to the slave's update call (flow control).
        """

    def complete(result):
        """The command ended; `result` is {"rc", "failure", "interrupted", "lost"}."""


class StoreLog:
    """Where one step's log goes in the store: text keys become appends to step `step_id`."""

    def __init__(self, store, step_id: int):
        self.store = store
        self.step_id = step_id
        # The unfinished last line of the header text so far: a header cut between two
        # updates (a slave splits long text) could split "  GITHUB_TOKEN=" from its value,
        # and each half would pass the mask. It is held until its newline, or flush().
        self._header_tail = ""

    def append(self, key: str, value) -> None:
        if key in TEXT_STREAMS:
            if key == "header" and isinstance(value, (str, bytes)):
                # A Buildbot worker lists the environment in clear; secrets never reach the
                # store (issue 8, case 5): mask whole lines only.
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                value = self._whole_header_lines(value)
                if not value:
                    return
            if isinstance(value, (str, bytes)):
                self.store.append_log(self.step_id, key, value)
        elif key == "log" and isinstance(value, (list, tuple)) and len(value) == 2:
            name, text = value
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(text, (str, bytes)):
                self.store.append_log(self.step_id, f"log:{name}", text)

    def _whole_header_lines(self, text: str) -> str:
        """The masked complete lines of the header so far; keeps the unfinished last one back
        (up to HEADER_TAIL_LIMIT characters: no environment line is longer)."""
        text = self._header_tail + text
        cut = text.rfind("\n") + 1
        if len(text) - cut > HEADER_TAIL_LIMIT:
            cut = len(text)
        self._header_tail = text[cut:]
        return mask_header(text[:cut]) if cut else ""

    def flush(self) -> None:
        """The command ended: store the header's unfinished last line, masked."""
        if self._header_tail:
            tail, self._header_tail = self._header_tail, ""
            self.store.append_log(self.step_id, "header", mask_header(tail))

    def note(self, text: str) -> None:
        """A line the master itself adds to the step's log, as a header."""
        self.flush()
        self.store.append_log(self.step_id, "header", text)


# The longest unfinished header line held back for masking (StoreLog); past it the text is
# stored as it is, so a peer sending a header with no newline cannot grow the master's memory.
HEADER_TAIL_LIMIT = 64 * 1024

# The update keys whose text is the step's log (docs/protocol.md §5.3); `log` carries (name, text).
TEXT_STREAMS = frozenset({"stdout", "stderr", "header"})


@implementer(ICommandObserver)
class RemoteObserver:
    """An observer living on the far end of a PB connection (the CLI's Referenceable)."""

    def __init__(self, ref, on_gone=None):
        self.client = ClientRef(ref, "watching client", on_gone=on_gone)

    @property
    def gone(self) -> bool:
        return self.client.gone

    def update(self, updates):
        return self.client.call("update", updates)

    def complete(self, result):
        self.client.forget_on_gone()
        return self.client.call("complete", result)


class RemoteCommand:
    """One command on one slave builder. The slave reports to it through the stepRef its link
    made (bbx/master/link.py), which calls `remote_update` and `remote_complete` here.

    Create it, add observers, `start()` it; `done` fires with the result dict
    `{"rc": int|None, "failure": str|None, "interrupted": bool, "lost": bool}`.
    """

    def __init__(self, slave_builder, name: str, args: dict[str, Any], reactor,
                 log: StoreLog | None = None):
        self.slave_builder = slave_builder
        self.log = log
        self.name = name
        self.args = dict(args)
        self.reactor = reactor
        self.command_id = next_command_id()
        self.observers: list[ICommandObserver] = []
        self.rc: int | None = None
        self.interrupted = False
        self.result: dict | None = None
        self.done = defer.Deferred()

    @property
    def finished(self) -> bool:
        return self.result is not None

    def add_observer(self, observer: ICommandObserver) -> None:
        self.observers.append(observer)

    @defer.inlineCallbacks
    def start(self, start_build: bool = True):
        """startBuild() (unless the build already sent it) then startCommand(self, id, name,
        args); fires once the slave accepted.

        Errbacks with the slave's error (unknown command, bad args) and releases the builder.
        """
        sb = self.slave_builder
        link = sb.link
        if sb.detached or link.gone:
            raise pb.PBConnectionLost(f"slave {sb.slave.name} is not attached")
        sb.command = self
        try:
            if start_build:
                yield link.start_build(sb.name)
            yield link.start_command(sb.name, self, self.command_id, self.name, self.args)
        except Exception:
            if sb.command is self:
                sb.command = None
            raise
        log.info("command {id} ({name}) started on slave {slave} builder {builder}",
                 id=self.command_id, name=self.name, slave=sb.slave.name, builder=sb.builder.name)
        return self.command_id

    def remote_update(self, updates):
        """The slave sends a list of `[dict, 0]` pairs (lists or tuples, one or more keys per dict).

        Returns 0 (Buildbot's vestigial ack), or a Deferred firing 0 once every observer has
        taken the envelope, so a slow observer slows the slave.
        """
        if self.finished:
            return 0
        log = self.log
        for key, value in iter_updates(updates):
            metrics.log_bytes(key, value)
            if key == "rc":
                self.rc = value
            elif log is not None:  # StoreLog keeps the text keys and ignores the rest
                log.append(key, value)
        if log is None:
            return self._forward(updates)
        d = log.store.written()
        d.addCallback(lambda _: self._forward(updates))
        return d

    def _forward(self, updates):
        if self.finished:
            return 0  # lost meanwhile: observers already heard `complete`
        waits = []
        for observer in list(self.observers):
            try:
                d = observer.update(updates)
            except Exception:
                log.failure("observer failed on update")
                continue
            if isinstance(d, defer.Deferred):
                waits.append(d)
        if not waits:
            return 0
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: 0)
        return d

    def remote_complete(self, failure=None):
        """The slave says the command ended: `failure` is None or a CopyableFailure. Returns None."""
        if failure is None and self.rc is None and self.name == "shell":
            # Transfers may end without rc (Buildbot decodes None as SUCCESS for them, §5.2).
            reason = "the command ended without an exit code"
        elif failure is None:
            reason = None
        else:
            reason = f"command could not run: {_one_line(failure)}"
        if self.log is None:
            self._finish(reason, lost=False)
        else:
            self.log.flush()
            # After the updates still waiting for their commit, so observers see them first.
            self.log.store.written().addCallback(lambda _: self._finish(reason, lost=False))

    def interrupt(self, why: str, now: bool = False):
        """Ask the slave to stop the command; it still ends with `complete` (docs/protocol.md §6).

        With `now`, an interrupt already sent is sent again: a bbx slave then skips the rest
        of the grace and sends SIGKILL (docs/protocol.md §6.1)."""
        if self.finished or (self.interrupted and not now):
            return defer.succeed(None)
        self.interrupted = True
        log.info("interrupting command {id} on slave {slave}: {why}", id=self.command_id,
                 slave=self.slave_builder.slave.name, why=why)
        sb = self.slave_builder
        d = sb.link.interrupt_command(sb.name, self.command_id, str(why))
        d.addErrback(lambda f: log.warn("interruptCommand failed: {f}", f=f.getErrorMessage()))
        return d

    def lost(self, why: str) -> None:
        """The slave's connection went away: the command is over, as lost."""
        if self.log is not None and not self.finished:
            self.log.flush()
        self._finish(why, lost=True)

    def _finish(self, failure: str | None, *, lost: bool) -> None:
        if self.finished:
            return
        self.result = {"rc": None if lost else self.rc, "failure": failure,
                       "interrupted": self.interrupted, "lost": lost}
        if self.slave_builder.command is self:
            self.slave_builder.command = None
        log.info("command {id} on slave {slave} ended: rc={rc} failure={failure}",
                 id=self.command_id, slave=self.slave_builder.slave.name, rc=self.result["rc"],
                 failure=failure)
        for observer in list(self.observers):
            try:
                observer.complete(dict(self.result))
            except Exception:
                log.failure("observer failed on complete")
        self.done.callback(dict(self.result))


def _one_line(failure) -> str:
    if isinstance(failure, Failure):
        text = failure.getErrorMessage()
    else:
        text = getattr(failure, "value", None) or str(failure)
    text = str(text).strip()
    return text.splitlines()[-1] if text else "unknown error"
