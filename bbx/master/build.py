"""Build: run a builder's steps in order on one slave, record everything, decide the result.

One Build holds one SlaveBuilder from the moment it is chosen until the build ends. It pings
the slave, calls `startBuild` once, then runs each step as a RemoteCommand whose text goes to
the store (bbx/master/store.py) and whose envelopes go to any watching CLI. Results follow
Buildbot 4.3 (bbx/master/results.py): a lost slave is RETRY, an operator's cancel CANCELLED,
a command that could not run EXCEPTION; haltOnFailure / flunkOnFailure / warnOnFailure fold
step results into the build's, and alwaysRun steps run even after a halt or a cancel.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from bbx.pb.interrupts import DEFAULT_INTERRUPT_SIGNAL, DEFAULT_KILL_AFTER, buildbot_kill_args

from . import metrics
from . import results
from .clients import ClientRef
from .command import ICommandObserver, RemoteCommand, StoreLog
from .config import DEFAULT_STEP_WORKDIR, StepConfig
from .transfer import (DOWNLOAD_BLOCKSIZE, TRANSFER_DECODE_RC, UPLOAD_BLOCKSIZE, FileReader,
                       FileWriter)

log = Logger()


def shell_args(command, workdir: str | None, env: dict | None, timeout: Any,
               max_time: float | None, log_environ: bool = True,
               interrupt_signal: str = DEFAULT_INTERRUPT_SIGNAL,
               kill_after: float = DEFAULT_KILL_AFTER) -> dict:
    """The full shell argument dict a Buildbot 4.3 master would send (docs/protocol.md §5.4), with
    the interrupt said in Buildbot's terms (docs/protocol.md §6.1)."""
    args = {
        "workdir": workdir or DEFAULT_STEP_WORKDIR,
        "command": command,
        "env": dict(env or {}),
        "want_stdout": True,
        "want_stderr": True,
        "logfiles": {},
        "timeout": timeout,
        "maxTime": max_time,
        "max_lines": None,
        "sigtermTime": None,
        "usePTY": False,
        "logEnviron": log_environ,
        "initial_stdin": None,
        "interruptSignal": "KILL",
    }
    args.update(buildbot_kill_args(interrupt_signal, kill_after))
    return args


def _policy(step: StepConfig) -> results.FailurePolicy:
    return results.FailurePolicy(halt_on_failure=step.halt_on_failure,
                                 flunk_on_failure=step.flunk_on_failure,
                                 warn_on_failure=step.warn_on_failure)


class BuildWatcher(ClientRef):
    """A CLI watching a build: a PB reference with remote_buildStarted(info),
    remote_stepStarted(info), remote_update(updates), remote_stepFinished(info) and
    remote_buildFinished(info). Calls are one-way except `update`, whose answer the build
    waits for (flow control). A watcher that goes away is dropped; the build goes on."""

    def __init__(self, ref):
        super().__init__(ref, "build watcher")


@implementer(ICommandObserver)
class _WatcherFeed:
    """Hands a step's update envelopes to the build's watchers (ICommandObserver)."""

    def __init__(self, build: "Build"):
        self.build = build

    def update(self, updates):
        waits = [d for w in list(self.build.watchers)
                 for d in [w.call("update", updates)] if d is not None]
        if not waits:
            return None
        return defer.DeferredList(waits, consumeErrors=True)

    def complete(self, result):
        return None


class Build:
    """One build of one builder on one slave builder, from `run()` to its result.

    `steps` are StepConfigs (a `bbx run` is a build of one shell step). `request` is the
    queued request it serves, as BuildQueue holds it (None for `bbx run`); `request_id` and
    `retries` come from it. `command_observers` are attached to every RemoteCommand of the
    build (the `bbx run` CLI); `watchers` (BuildWatcher) get step events.
    `first_command` fires with the first RemoteCommand once the slave accepted it, or fails
    with the reason it could not start.
    """

    def __init__(self, queue, builder, slave_builder, steps, *, request: dict | None = None,
                 ping: bool = True):
        self.queue = queue
        self.store = queue.store
        self.reactor = queue.reactor
        self.builder = builder
        self.slave_builder = slave_builder
        self.slave_name = slave_builder.slave.name
        self.steps: list[StepConfig] = list(steps)
        self.request = request
        self.request_id: int | None = request["id"] if request else None
        self.retries: int = request.get("retries", 0) if request else 0
        self.ping = ping
        self.build_id: int | None = None
        self.number: int | None = None
        self.result: int | None = None
        self.terminate = False
        self.cancelled: str | None = None
        self.lost: str | None = None
        self.command: RemoteCommand | None = None
        self.command_observers: list = []
        self.watchers: list[BuildWatcher] = []
        self.first_command = defer.Deferred()
        self.finished = defer.Deferred()
        self.step_results: list[dict] = []
        self.started_at: float | None = None
        self.requeued = False
        self._released = False

    # -- control ------------------------------------------------------------------------

    def info(self) -> dict:
        return {"build_id": self.build_id, "number": self.number, "builder": self.builder.name,
                "slave": self.slave_name, "request_id": self.request_id,
                "steps": [s.name for s in self.steps], "started_at": self.started_at}

    def watch(self, ref) -> None:
        """Add a watching CLI; it first hears buildStarted (if the build has started)."""
        watcher = BuildWatcher(ref)
        self.watchers.append(watcher)
        if self.build_id is not None:
            watcher.call("buildStarted", self.info())

    def cancel(self, why: str) -> None:
        """Stop the build: the running step is interrupted, later steps skipped unless
        alwaysRun; the result is CANCELLED (Buildbot's stopBuild). Cancelled again while its
        step is still within its grace, the step is killed at once."""
        again = self.cancelled is not None
        if not again:
            self.cancelled = why
            log.info("build {id} of {builder}: cancelling ({why})", id=self.build_id,
                     builder=self.builder.name, why=why)
        if self.command is not None:
            self.command.interrupt(why, now=again)

    def slave_lost(self, why: str) -> None:
        """The slave's connection went away (called by the SlaveBuilder before the command
        hears it): no further step can run; the result is RETRY."""
        if self.lost is None:
            self.lost = why

    # -- running --------------------------------------------------------------------------

    def _notify(self, method: str, info: dict) -> None:
        for watcher in list(self.watchers):
            watcher.call(method, info)

    @defer.inlineCallbacks
    def run(self):
        """Run the build to its end; fires with the result. Never errbacks."""
        sb = self.slave_builder
        try:
            if self.ping:
                try:
                    yield sb.ping()
                except Exception as e:
                    # Buildbot drops a slave that fails its pre-build ping (docs/protocol.md §4.2);
                    # the request waits in the queue for the slave to come back.
                    log.warn("build of {builder}: slave {slave} failed its ping ({why}); "
                             "dropping it", builder=self.builder.name, slave=self.slave_name,
                             why=str(e))
                    if not sb.detached:
                        sb.link.drop()
                    self.result = None
                    self._fail_first(e)
                    return None
            # The slave's answer to startBuild and the build's rows in the store (the build
            # and its first step, one transaction) are independent: wait for both at once.
            starting = (sb.link.start_build(sb.name).addErrback(self._not_started)
                        if self.lost is None else defer.succeed(None))
            first_step = self.steps[0].name if self.steps else None
            started = yield self.store.start_build(self.request_id, self.builder.name,
                                                   self.slave_name, first_step=first_step)
            self.build_id, self.number = started[:2]
            self.started_at = self.reactor.seconds()
            self.queue.build_started(self)
            log.info("build {id} (#{number} of {builder}) started on slave {slave}",
                     id=self.build_id, number=self.number, builder=self.builder.name,
                     slave=self.slave_name)
            self._notify("buildStarted", self.info())
            yield starting  # never fails: a refusal sets self.lost
            yield self._run_steps(first_step_id=started[2] if first_step else None)
        except Exception as e:
            log.failure("build {id} of {builder} failed", id=self.build_id,
                        builder=self.builder.name)
            self.result = results.worst_of(self.result, results.EXCEPTION)
            self._fail_first(e)
        finally:
            yield self._end()
        return self.result

    def _fail_first(self, error) -> None:
        if not self.first_command.called:
            self.first_command.errback(error if isinstance(error, BaseException)
                                       else RuntimeError(str(error)))

    def _not_started(self, failure) -> None:
        self.lost = self.lost or (f"slave {self.slave_name} did not start the build: "
                                  f"{failure.value}")

    @defer.inlineCallbacks
    def _run_steps(self, first_step_id: int | None = None):
        for number, step in enumerate(self.steps, 1):
            if self.queue.stopping:
                return
            if number == 1 and first_step_id is not None:
                step_id = first_step_id  # written with the build (store.start_build)
            else:
                step_id = yield self.store.start_step(self.build_id, number, step.name)
            run = not (self.terminate or self.cancelled or self.lost) or (
                step.always_run and not self.lost)
            info = {"build_id": self.build_id, "number": number, "name": step.name,
                    "kind": step.kind}
            if not run:
                yield self.store.finish_step(step_id, results.SKIPPED, None)
                done = dict(info, result=results.SKIPPED, result_name="skipped", rc=None,
                            duration=0.0)
                self.step_results.append(done)
                self._notify("stepFinished", done)
                continue
            started = self.reactor.seconds()
            self._notify("stepStarted", info)
            result, rc = yield self._run_step(step, step_id)
            if number == len(self.steps):
                # The slave is done with us: free it before the bookkeeping writes, so the
                # next `bbx run` (told `complete` already) finds it idle.
                self._release()
            if self.queue.stopping:
                return
            yield self.store.finish_step(step_id, result, rc)
            done = dict(info, result=result, result_name=results.name(result), rc=rc,
                        duration=self.reactor.seconds() - started)
            self.step_results.append(done)
            self._notify("stepFinished", done)
            self.result, terminate = results.combine(self.result, result, _policy(step))
            if terminate:
                self.terminate = True
        if self.result is None:
            self.result = results.SUCCESS

    def _note(self, storelog: StoreLog, text: str) -> None:
        """A header line from the master itself: in the step's log and on every watcher."""
        storelog.note(text)
        envelope = [[{"header": text}, 0]]
        for observer in self.command_observers:
            observer.update(envelope)
        _WatcherFeed(self).update(envelope)

    @defer.inlineCallbacks
    def _run_step(self, step: StepConfig, step_id: int):
        """Run one step; fires with (result, rc)."""
        storelog = StoreLog(self.store, step_id)
        writer = reader = None
        decode_rc = results.DEFAULT_DECODE_RC
        if step.kind == "shell":
            command = list(step.command) if isinstance(step.command, tuple) else step.command
            name, args = "shell", shell_args(command, step.workdir, dict(step.env),
                                             step.timeout, step.max_time, step.log_environ,
                                             step.interrupt_signal, step.sigterm_time)
        else:
            decode_rc = TRANSFER_DECODE_RC
            master_path = self.queue.basedir / (step.dest if step.kind == "upload" else step.src)
            try:
                if step.kind == "upload":
                    writer = FileWriter(master_path)
                    name, args = "uploadFile", {
                        "workdir": step.workdir, "workersrc": step.src, "writer": writer,
                        "maxsize": None, "blocksize": UPLOAD_BLOCKSIZE, "keepstamp": False}
                    self._note(storelog, f"uploading {step.src} from slave {self.slave_name} "
                                         f"to {master_path}\n")
                else:
                    reader = FileReader(master_path)
                    name, args = "downloadFile", {
                        "workdir": step.workdir, "workerdest": step.dest, "reader": reader,
                        "maxsize": None, "blocksize": DOWNLOAD_BLOCKSIZE, "mode": None}
                    self._note(storelog, f"downloading {master_path} to {step.dest} on slave "
                                         f"{self.slave_name}\n")
            except OSError as e:
                self._note(storelog, f"bbx: cannot open {master_path} on the master: "
                                     f"{e.strerror}\n")
                return results.FAILURE, None
        if self.lost:
            return results.RETRY, None
        cmd = RemoteCommand(self.slave_builder, name, args, self.reactor, log=storelog)
        for observer in self.command_observers:
            cmd.add_observer(observer)
        if self.watchers:
            cmd.add_observer(_WatcherFeed(self))
        self.command = cmd
        try:
            yield cmd.start(start_build=False)
        except Exception as e:
            self.command = None
            if writer is not None:
                writer.cancel()
            if self.lost or isinstance(e, (pb.PBConnectionLost, pb.DeadReferenceError)):
                self.lost = self.lost or f"lost the connection to slave {self.slave_name}"
                self._fail_first(e)
                return results.RETRY, None
            text = error_line(e)
            self._note(storelog, f"bbx: slave {self.slave_name} could not start the command: "
                                 f"{text}\n")
            self._fail_first(CommandStartFailed(text))
            return results.EXCEPTION, None
        if not self.first_command.called:
            self.first_command.callback(cmd)
        outcome = yield cmd.done
        self.command = None
        if reader is not None:
            reader.remote_close()
        result = results.from_completion(outcome, decode_rc)
        if writer is not None:
            if result == results.SUCCESS and writer.closed:
                self._note(storelog, f"bbx: stored {writer.nbytes} bytes in {writer.dest}\n")
            else:
                writer.cancel()
        if outcome.get("failure") and not outcome.get("lost"):
            self._note(storelog, f"bbx: {outcome['failure']}\n")
        return result, outcome.get("rc")

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.slave_builder.build is self:
            self.slave_builder.build = None
        self.queue.load.release(self.slave_name)
        self.queue.maybe_start()

    @defer.inlineCallbacks
    def _end(self):
        self._release()
        if self.lost and self.build_id is not None:
            self.result = results.RETRY  # Buildbot's lostRemote: the whole build is RETRY
        elif self.cancelled and self.result != results.RETRY:
            self.result = results.worst_of(self.result, results.CANCELLED)
        if self.queue.stopping:
            # The master is stopping: leave the build open; the store marks it interrupted.
            self.queue.build_ended(self)
            return
        if self.build_id is not None:
            try:
                # One transaction for the build's result and its request (store.end_build).
                requeue = (self.request_id is not None and self.result == results.RETRY
                           and bool(self.lost) and self.retries < self.queue.retry_lost)
                yield self.store.end_build(self.build_id, self.result, self.request_id, requeue)
                self.requeued = requeue
            except Exception:
                log.failure("build {id}: could not record its end", id=self.build_id)
            log.info("build {id} (#{number} of {builder}) on slave {slave} ended: {result}"
                     "{requeued}", id=self.build_id, number=self.number, builder=self.builder.name,
                     slave=self.slave_name, result=results.name(self.result).upper(),
                     requeued=" (request queued again)" if self.requeued else "")
            metrics.BUILDS.inc(result=results.name(self.result))
            self._notify("buildFinished", self.summary())
        self.queue.build_ended(self)
        if not self.finished.called:
            self.finished.callback(self.result)

    def summary(self) -> dict:
        return dict(self.info(), result=self.result, result_name=results.name(self.result),
                    steps=self.step_results, requeued=self.requeued,
                    duration=None if self.started_at is None
                    else self.reactor.seconds() - self.started_at,
                    cancelled=self.cancelled, lost=self.lost)


class CommandStartFailed(Exception):
    """The slave refused to start a step's command (unknown command, bad arguments)."""


def error_line(exc) -> str:
    """The last line of an error's message; for a PB remote error, the remote message's."""
    remote = getattr(exc, "remoteType", None)
    text = str(exc.args[1] if remote is not None and len(exc.args) > 1 else exc)
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
