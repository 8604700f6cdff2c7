"""Build commands: bbx build | builds | log | cancel.

Each command parses its options, then imports Twisted, rich and the client inside its body,
so `bbx --help` stays fast. ops.register() adds them to the app.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, JsonOption,
                     MasterDirOption, MasterOption, PasswordOption, UserOption)
from .output import conn, consoles, json_line, print_json

# Exit codes of `bbx build`.
EXIT_BUILD_BAD = 1          # FAILURE, EXCEPTION, CANCELLED, RETRY (not requeued), SKIPPED
EXIT_INTERRUPTED = 130      # left with Ctrl-C before the build ended
EXIT_LOST = 255             # lost the connection to the master while waiting
# Results whose build counts as good (bbx.master.results: SUCCESS=0, WARNINGS=1).
GOOD_RESULTS = ("success", "warnings")
# How long one `bbx log --follow` call lets the master wait for new log text before it
# answers "nothing new yet" (the master caps it at 10 s): the master answers as soon as rows
# are committed — its own, or another master's (NOTIFY) — so nothing polls.
FOLLOW_WAIT = 5.0
# One page of stored log per call (bbx/master/control.py MAX_LOG_PAGE caps it too).
LOG_PAGE = 256 * 1024

BUILD_HELP = """Queue a build of BUILDER (the steps master.toml gives it) and show each step live.

The build waits in the master's queue while every slave of the builder is busy or absent. Each step gets a rule with its name; its output is shown as `bbx run` shows it; a table of step results ends the build. With --no-wait the request id is printed and bbx exits at once. Ctrl-C cancels the build (and still waits for it to end); a second Ctrl-C leaves at once.

\b
Exit status:
  0      the build ended SUCCESS or WARNINGS (or --no-wait queued it)
  1      the build ended FAILURE, EXCEPTION, CANCELLED or RETRY
  130    left with a second Ctrl-C; the build may still be running
  255    lost the connection to the master
  2, 3, 4  bad usage, master unreachable, login refused
"""


def register(app: typer.Typer) -> None:
    """Add the build commands to the top-level app."""
    app.command("build", help=BUILD_HELP)(build)
    app.command("builds")(builds)
    app.command("log")(log)
    app.command("cancel")(cancel)


# ---------------------------------------------------------------------------- build


def build(
    builder: Annotated[str, typer.Argument(help="The builder to build.")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Queue the build and exit.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="Print each event and update as a JSON line, then the result.")] = False,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secret-looking NAME=value lines of headers.")] = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Queue a build (the operator-facing help is BUILD_HELP)."""
    from .client import call

    out, err = consoles()
    session = BuildSession(out, err, json=json, show_secrets=show_secrets)
    call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
         lambda perspective, reactor: session.run(perspective, reactor, builder, not no_wait))
    raise typer.Exit(session.report())


class BuildSession:
    """One `bbx build`: queue it, paint its steps, decide the exit code.

    `run(perspective, reactor, builder, wait)` is the conversation handed to client.call; it
    fires when the master reports the build finished (and not queued again), when the master
    goes away, or on a second Ctrl-C. `report()` prints the summary and returns the exit code.
    """

    def __init__(self, out, err, *, json: bool = False, show_secrets: bool = False):
        from .sinks import make_sink

        self.out, self.err, self.json, self.show_secrets = out, err, json, show_secrets
        self.answer: dict | None = None
        self.started: dict | None = None
        self.finished: dict | None = None
        self.master_lost = False
        self.left = False
        self.sigints = 0
        self.wait = True
        self.sink = make_sink(out, err, json)

    async def run(self, perspective, reactor, builder: str, wait: bool):
        import signal

        from twisted.internet import defer

        self.wait = wait
        self.perspective = perspective
        self.done = defer.Deferred()
        observer = _observer_class()(self) if wait else None
        perspective.notifyOnDisconnect(lambda _: self._end(master_lost=True))
        if wait:
            signal.signal(signal.SIGINT, lambda s, f: reactor.callFromThread(self._sigint))
        self.answer = await perspective.callRemote("build", builder, observer, wait)
        if not wait:
            return self.answer
        if self.answer.get("position") and not self.json and self.started is None:
            attached = self.answer.get("attached") or []
            why = ("its slaves are busy" if attached else "none of its slaves is attached")
            self._note(f"request {self.answer['request_id']} queued (position "
                       f"{self.answer['position']}; {why})")
        if self.sigints:
            self._cancel()
        await self.done
        return self.finished

    def _end(self, *, master_lost: bool = False, left: bool = False) -> None:
        self.master_lost = self.master_lost or master_lost
        self.left = self.left or left
        if not self.done.called:
            self.done.callback(None)

    def _sigint(self) -> None:
        self.sigints += 1
        if self.sigints == 1:
            self._note("cancelling the build (Ctrl-C again to leave at once)")
            self._cancel()
        else:
            self._end(left=True)

    def _cancel(self) -> None:
        if self.answer is None:
            return  # sent once `build` answers
        if self.started is not None:
            d = self.perspective.callRemote("cancel", self.started["build_id"])
        else:
            d = self.perspective.callRemote("cancel", None, self.answer["request_id"])
        d.addErrback(lambda f: self._note(f"could not cancel: {f.getErrorMessage()}"))

    def _note(self, text: str) -> None:
        from .sinks import note

        note(self.sink, self.err, text)

    # -- what the observer receives

    def build_started(self, info: dict) -> None:
        self.started = info
        if self.json:
            json_line({"event": "buildStarted", **info})
            return
        self._note(f"build {info['build_id']} (#{info['number']} of {info['builder']}) "
                   f"started on slave {info['slave']}")

    def step_started(self, info: dict) -> None:
        if self.json:
            json_line({"event": "stepStarted", **info})
            return
        from .render import step_rule

        self.sink.section(step_rule(info))

    def step_finished(self, info: dict) -> None:
        if self.json:
            json_line({"event": "stepFinished", **info})
            return
        if info.get("result_name") == "skipped":
            from .render import step_rule

            self.sink.section(step_rule(info))

    def build_finished(self, info: dict) -> None:
        if self.json:
            json_line({"event": "buildFinished", **info})
        if info.get("requeued"):
            self._note(f"build {info.get('build_id')} lost its slave (RETRY); request "
                       f"{info.get('request_id')} is queued again")
            self.started = None
            return
        self.finished = info
        self._end()

    def update(self, updates) -> None:
        from bbx.pb.updates import iter_updates

        from .render import mask_header

        if self.json:
            for key, value in iter_updates(updates):
                if key == "header" and isinstance(value, str):
                    value = mask_header(value, self.show_secrets)
                json_line({key: value})
            return
        from .sinks import paint_updates

        paint_updates(self.sink, updates, self.show_secrets)

    # -- the end

    def report(self) -> int:
        """Print the summary (table and line); return bbx's exit code."""
        if not self.wait:
            answer = self.answer or {}
            if self.json:
                print_json(answer)
            else:
                self.out.print(f"queued build request {answer.get('request_id')} "
                               f"(position {answer.get('position') or '—'})", highlight=False,
                               markup=False)
            return 0
        info = self.finished
        if info is None:
            if self.master_lost:
                message, code = "lost the connection to the master; the build may go on", EXIT_LOST
            else:
                build_id = (self.started or {}).get("build_id")
                message = (f"left; build {build_id} may still be running (bbx cancel {build_id})"
                           if build_id else "left; the build request stays queued")
                code = EXIT_INTERRUPTED
            if self.json:
                json_line({"event": "end", "exit_code": code, "message": message})
            self.err.print(f"bbx: {message}", highlight=False, soft_wrap=True, markup=False)
            return code
        name = str(info.get("result_name"))
        code = 0 if name in GOOD_RESULTS else EXIT_BUILD_BAD
        if self.json:
            json_line({"event": "end", "exit_code": code, "result_name": name,
                   "build_id": info.get("build_id")})
            return code
        from .render import build_summary

        self.sink.finish(build_summary(info, code))
        return code


_OBSERVER = None


def _observer_class():
    """The pb.Referenceable the master calls with build events (defined late: Twisted is heavy)."""
    global _OBSERVER
    if _OBSERVER is None:
        from twisted.spread import pb

        class BuildObserver(pb.Referenceable):
            """The CLI's end of a build, handed to the master's `build`.

            The master calls buildStarted(info), stepStarted(info), update(updates) (the
            slave's envelopes, answered with None once painted: flow control),
            stepFinished(info) and buildFinished(info); each answered with None.
            """

            def __init__(self, session: BuildSession):
                self.session = session

            def remote_buildStarted(self, info):
                """A build for our request started: {"build_id", "number", "slave", ...}. Returns None."""
                self.session.build_started(info)

            def remote_stepStarted(self, info):
                """A step started: {"number", "name", "kind"}. Returns None."""
                self.session.step_started(info)

            def remote_update(self, updates):
                """Output of the running step, as the slave sent it; None once painted (flow control)."""
                self.session.update(updates)

            def remote_stepFinished(self, info):
                """A step ended: {"number", "name", "result_name", "rc", "duration"}. Returns None."""
                self.session.step_finished(info)

            def remote_buildFinished(self, info):
                """The build ended: {"result_name", "steps", "requeued", ...}. Returns None."""
                self.session.build_finished(info)

        _OBSERVER = BuildObserver
    return _OBSERVER


# ---------------------------------------------------------------------------- builds


def builds(
    builder: Annotated[str | None, typer.Argument(help="Only this builder's builds.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many builds.")] = 20,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List recent builds (newest first) and the requests waiting in the queue."""
    from .client import call

    async def conversation(perspective, reactor):
        found = await perspective.callRemote("builds", builder, limit)
        queued = await perspective.callRemote("queue", builder)
        return {"builds": found, "queued": queued}

    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure), conversation)
    if json:
        print_json(answer)
        return
    from .render import builds_table

    consoles()[0].print(builds_table(answer["builds"], answer["queued"]), highlight=False)


# ---------------------------------------------------------------------------- log


def log(
    build_id: Annotated[int, typer.Argument(metavar="BUILD", help="The build id (see bbx builds).")],
    step: Annotated[str | None, typer.Argument(help="Only this step (number or name).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the build runs.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="One JSON line per stored chunk: seq, step, stream, text.")] = False,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secret-looking NAME=value lines of headers.")] = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Print a build's stored log (every step, or one), live with --follow while it runs."""
    from .client import call

    out, _err = consoles()
    printer = LogPrinter(out, json=json, show_secrets=show_secrets)
    step_arg: Any = int(step) if step is not None and step.isdigit() else step

    async def conversation(perspective, reactor):
        info = await perspective.callRemote("build_info", build_id)
        printer.steps = {s["number"]: s["name"] for s in info.get("steps", [])}
        after = None
        while True:
            page = await perspective.callRemote("log", build_id, step_arg, after, LOG_PAGE,
                                                FOLLOW_WAIT if follow else 0)
            chunks = page["chunks"]
            if chunks:
                if any(c[1] not in printer.steps for c in chunks):
                    info = await perspective.callRemote("build_info", build_id)
                    printer.steps = {s["number"]: s["name"] for s in info.get("steps", [])}
                printer.chunks(chunks)
                after = chunks[-1][0]
                continue
            if page["finished"] or not follow:
                return page

    final = call(conn(master_dir, master, user, password, ca, fingerprint, insecure), conversation)
    printer.end(final)


class LogPrinter:
    """Paints stored log chunks [seq, step, stream, text]: a rule where the step changes,
    stderr red and headers dim on a terminal; plain text in a pipe."""

    def __init__(self, console, *, json: bool = False, show_secrets: bool = False):
        self.console = console
        self.json = json
        self.show_secrets = show_secrets
        self.steps: dict[int, str] = {}
        self.current: int | None = None
        self.at_line_start = True

    def chunks(self, chunks) -> None:
        from .render import mask_header

        # The store keeps headers as the slave sent them (a buildbot-worker does not mask its
        # environment header); what an operator sees is masked like `bbx run` output.
        chunks = [(seq, step, stream, mask_header(text, self.show_secrets) if stream == "header" else text)
                  for seq, step, stream, text in chunks]
        if self.json:
            for seq, step, stream, text in chunks:
                json_line({"seq": seq, "step": step, "name": self.steps.get(step), "stream": stream,
                       "text": text})
            return
        from rich.text import Text

        from .render import step_rule

        terminal = self.console.is_terminal
        for _seq, step, stream, text in chunks:
            if step != self.current:
                if not self.at_line_start:
                    sys.stdout.write("\n")
                sys.stdout.flush()
                self.console.print(step_rule({"number": step, "name": self.steps.get(step, "?")}))
                self.current = step
                self.at_line_start = True
            if terminal and stream != "stdout":
                style = "red" if stream == "stderr" else "dim"
                self.console.print(Text(text, style=style), end="", soft_wrap=True,
                                   highlight=False)
            else:
                sys.stdout.write(text)
            self.at_line_start = text.endswith("\n")
        sys.stdout.flush()

    def end(self, page: dict | None) -> None:
        if self.json or page is None:
            return
        if not self.at_line_start:
            sys.stdout.write("\n")
            sys.stdout.flush()


# ---------------------------------------------------------------------------- cancel


def cancel(
    build_id: Annotated[int, typer.Argument(metavar="BUILD", help="The running build's id "
                                            "(or, with --request, a queued request's id).")],
    request: Annotated[bool, typer.Option(
        "--request", help="BUILD is a queued build request id: remove it from the queue.")] = False,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Cancel a running build (its step is interrupted; result CANCELLED) or a queued request."""
    from .client import call

    args = (None, build_id) if request else (build_id,)
    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("cancel", *args))
    if json:
        print_json(answer)
        return
    if answer.get("state") == "removed":
        text = f"removed build request {answer.get('request_id')} from the queue"
    else:
        text = f"cancelling build {answer.get('build_id')}"
    consoles()[0].print(text, highlight=False, markup=False)
