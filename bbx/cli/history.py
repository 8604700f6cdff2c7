"""The build history commands: bbx builds | log | cancel.

Each command parses its options, then imports Twisted, rich and the client inside its body.
"""

import sys
from typing import Annotated, Any

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, JsonOption, MasterDirOption,
                     MasterOption, PasswordOption, TimeoutOption, UserOption)
from .output import conn, consoles, json_line, print_json

# How long one `bbx log --follow` call lets the master wait for new log text before it
# answers "nothing new yet" (the master caps it at 10 s): the master answers as soon as rows
# are committed — its own, or another master's (NOTIFY) — so nothing polls.
FOLLOW_WAIT = 5.0
# How often `bbx log --request N --follow` asks whether a queued request has started a build.
REQUEST_POLL = 1.0
# One page of stored log per call (bbx/master/control.py MAX_LOG_PAGE caps it too).
LOG_PAGE = 256 * 1024


def register(app: typer.Typer) -> None:
    """Add builds, log and cancel to the top-level app."""
    app.command("builds")(builds)
    app.command("log")(log)
    app.command("cancel")(cancel)


# ---------------------------------------------------------------------------- builds


def builds(
    builder: Annotated[str | None, typer.Argument(help="Only this builder's builds.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many builds.")] = 20,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List recent builds (newest first) and the requests waiting in the queue."""
    from .client import call

    async def conversation(perspective, reactor):
        found = await perspective.callRemote("builds", builder, limit)
        queued = await perspective.callRemote("queue", builder)
        return {"builds": found, "queued": queued}

    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  conversation)
    if json:
        print_json(answer)
        return
    from .render import builds_table

    consoles()[0].print(builds_table(answer["builds"], answer["queued"]), highlight=False)


# ---------------------------------------------------------------------------- log


def log(
    build_id: Annotated[int, typer.Argument(metavar="BUILD", help="The build id (see bbx builds), "
                                            "or with --request a build request's id.")],
    step: Annotated[str | None, typer.Argument(help="Only this step (number or name).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the build runs.")] = False,
    request: Annotated[bool, typer.Option(
        "--request", help="BUILD is a build request id (as bbx build --no-wait prints): show "
        "the newest build serving it; with --follow, wait for it to start.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="One JSON line per stored chunk: seq, step, stream, text.")] = False,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secret-looking NAME=value lines of headers.")] = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Print a build's stored log (every step, or one), live with --follow while it runs."""
    from .client import call

    out, _err = consoles()
    printer = LogPrinter(out, json=json, show_secrets=show_secrets)
    step_arg: Any = int(step) if step is not None and step.isdigit() else step

    async def conversation(perspective, reactor):
        nonlocal build_id
        if request:
            build_id = await _request_build(perspective, reactor, build_id, follow)
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

    final = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  conversation)
    printer.end(final)


async def _request_build(perspective, reactor, request_id: int, follow: bool) -> int:
    """The newest build serving a request; with `follow`, waits until one started."""
    from twisted.internet import task

    from .errors import BbxError

    while True:
        state = await perspective.callRemote("request", request_id)
        if state.get("build_id") is not None:
            return state["build_id"]
        if state.get("state") == "done":
            raise BbxError(f"build request {request_id} ended without a build (cancelled "
                           "while queued)")
        if not follow:
            raise BbxError(f"build request {request_id} is still queued; add --follow to wait "
                           "for its build")
        await task.deferLater(reactor, REQUEST_POLL, lambda: None)


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
        "--request", help="BUILD is a build request id: remove it from the queue, or cancel "
        "the build serving it.")] = False,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Cancel a running build (its step gets its interrupt signal, then SIGKILL after its
    grace; result CANCELLED) or a queued request."""
    from .client import call

    args = (None, build_id) if request else (build_id,)
    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("cancel", *args))
    if json:
        print_json(answer)
        return
    if answer.get("state") == "removed":
        text = f"removed build request {answer.get('request_id')} from the queue"
    else:
        text = f"cancelling build {answer.get('build_id')}"
    consoles()[0].print(text, highlight=False, markup=False)
