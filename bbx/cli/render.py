"""What the operator sees: pure functions from the master's answers to rich renderables.

Render them to `Console(record=True, width=...)` to test. The sinks that paint a running
command's output live in bbx/cli/sinks.py.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .masks import MASK, mask_environ, mask_header, masked_info  # noqa: F401
from .output import to_json  # noqa: F401  (kept importable from here)
from .text import builder_slaves, duration, human_bytes, relative_time, slave_state  # noqa: F401

# The state column of `bbx slaves`: an operator's hold in yellow, work in progress in cyan.
_STATE_STYLES = {"paused": "yellow", "draining": "yellow", "building": "cyan",
                 "idle": "green", "disconnected": "dim"}


# ---------------------------------------------------------------------------- small formats


# ---------------------------------------------------------------------------- ping


def ping_report(answer: dict) -> RenderableType:
    """Per-ping round-trip times in ms and a min/avg/max summary."""
    rtts = [float(r) * 1000 for r in answer.get("rtts", [])]
    lines = [Text.assemble("ping builder ", (str(answer.get("builder")), "bold"),
                           " on slave ", (str(answer.get("slave")), "bold"))]
    for i, rtt in enumerate(rtts, 1):
        lines.append(Text(f"  reply {i}: {rtt:.2f} ms"))
    if rtts:
        lines.append(Text(f"{len(rtts)} {'reply' if len(rtts) == 1 else 'replies'}: "
                          f"min {min(rtts):.2f} / avg {sum(rtts) / len(rtts):.2f} / "
                          f"max {max(rtts):.2f} ms", style="green"))
    return Group(*lines)


# ---------------------------------------------------------------------------- info

_SYSTEM_KEYS = ("system", "numcpus", "basedir", "version")


def _kv_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", show_header=False,
                  box=None, padding=(0, 2, 0, 1))
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        # info/admin and info/host arrive with the file's trailing newline.
        # Text, not str: rich would read "[...]" in a value as markup.
        table.add_row(Text(str(key)), Text("" if value is None else str(value).strip()))
    return table


def info_report(answer: dict, *, show_secrets: bool = False, now: float | None = None) -> RenderableType:
    """Sections: slave summary, system, admin/host, environ (masked), commands."""
    now = time.time() if now is None else now
    answer = masked_info(answer, show_secrets)
    info = answer.get("info") or {}
    since = answer.get("connected_since")
    sections: list[RenderableType] = [_kv_table("slave", [
        ("name", answer.get("name")),
        ("dialect", answer.get("dialect")),
        ("peer", answer.get("peer")),
        ("connected since", None if since is None else
         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} ({relative_time(since, now)})"),
    ])]
    system = [(k, info[k]) for k in _SYSTEM_KEYS if k in info]
    system += sorted((k, v) for k, v in info.items() if k.startswith("os_"))
    sections.append(_kv_table("system", system))
    sections.append(_kv_table("admin / host", [(k, info.get(k)) for k in ("admin", "host")]))
    environ = info.get("environ") or {}
    sections.append(_kv_table("environ", sorted(environ.items())))
    # The master names the command table whatever the slave's generation called it.
    commands = answer.get("commands") if isinstance(answer.get("commands"), dict) else {}
    sections.append(_kv_table("commands", sorted(commands.items())))
    spaced: list[RenderableType] = []
    for section in sections:
        spaced += [section, Text("")]
    return Group(*spaced[:-1])


# ---------------------------------------------------------------------------- slaves / builders


def slaves_table(slaves: list[dict], *, now: float | None = None) -> Table:
    """One row per configured slave: connected ✓/✗, since, builders, dialect, last message;
    with several masters, a "master" column (✓ yellow: attached to another master)."""
    now = time.time() if now is None else now
    table = Table(title="slaves", title_justify="left", title_style="bold")
    elsewhere = any(not s.get("connected") and s.get("master") for s in slaves)
    columns = ["name", "connected", "state", "since", "builders", "dialect", "last message"]
    if elsewhere:
        columns.insert(2, "master")
    for column in columns:
        table.add_column(column)
    for slave in slaves:
        connected = bool(slave.get("connected"))
        there = not connected and bool(slave.get("master"))
        cells = [
            Text(str(slave.get("name"))),
            Text("✓", style="green") if connected else
            Text("✓", style="yellow") if there else Text("✗", style="red"),
            Text(slave_state(slave), style=_STATE_STYLES.get(slave.get("state"), "")),
            relative_time(slave.get("connected_since"), now) if connected or there else "—",
            Text(", ".join(slave.get("builders") or [])),
            Text(str(slave.get("dialect") or "—")),
            relative_time(slave.get("last_message"), now),
        ]
        if elsewhere:
            cells.insert(2, Text(str(slave.get("master") or "—")))
        table.add_row(*cells)
    return table


def masters_table(masters: list[dict]) -> Table:
    """One row per master of the store: state, heartbeat age, host and pid, endpoint."""
    table = Table(title="masters", title_justify="left", title_style="bold")
    for column in ("name", "state", "heartbeat", "host", "pid", "endpoint"):
        table.add_column(column)
    styles = {"active": "green", "stopped": "dim", "dead": "red"}
    for master in masters:
        age = master.get("heartbeat_age")
        name = str(master.get("name")) + (" (this)" if master.get("this") else "")
        state = str(master.get("state"))
        if master.get("reason") and state != "active":
            state += f": {master['reason']}"
        table.add_row(
            Text(name),
            Text(state, style=styles.get(master.get("state"), "")),
            Text("—" if age is None else f"{age:.1f}s ago"),
            Text(str(master.get("host") or "—")),
            Text(str(master.get("pid") or "—")),
            Text(str(master.get("endpoint") or "—")),
        )
    return table


def builders_table(builders: list[dict]) -> Table:
    """One row per builder: the slaves it selects (names, tags), those it can use now
    (attached, matching, not paused or draining), its builddir."""
    table = Table(title="builders", title_justify="left", title_style="bold")
    for column in ("name", "slaves", "can use now", "builddir"):
        table.add_column(column)
    for builder in builders:
        attached = builder.get("attached") or []
        usable = builder.get("usable", attached) or []
        held = [n for n in attached if n not in usable]
        cell = Text(", ".join(usable), style="green") if usable else Text("none", style="red")
        if held:
            cell.append(f" (paused: {', '.join(held)})", style="yellow")
        table.add_row(
            Text(str(builder.get("name"))),
            Text(builder_slaves(builder)),
            cell,
            Text(str(builder.get("builddir", ""))),
        )
    return table


# ---------------------------------------------------------------------------- run


def run_status(where: str, elapsed: float, nbytes: int) -> Text:
    """The live status line under a running command's output ('where': 'slave x', 'builder b')."""
    return Text(f"▶ running on {where} · {duration(elapsed)} · {human_bytes(nbytes)}", style="dim")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_line(info: dict) -> str:
    """One line for a `bbx run` waiting for a free slave: {"builder", "position", "busy"}."""
    busy = ", ".join(info.get("busy") or []) or "none attached"
    return (f"every slave of builder {info.get('builder')} is busy ({busy}); waiting, "
            f"{_ordinal(int(info.get('position') or 1))} in line (Ctrl-C leaves the line)")


def waiting_status(info: dict, elapsed: float) -> Text:
    """The live status line while a `bbx run` waits for a slave."""
    return Text(f"⏳ waiting for a free slave of {info.get('builder')} · "
                f"{_ordinal(int(info.get('position') or 1))} in line · {duration(elapsed)}",
                style="dim")


def build_status(number, total, name, elapsed: float, nbytes: int) -> Text:
    """The live status line of `bbx build`: step n of m, its name, the build's time, bytes."""
    of = f" of {total}" if total else ""
    return Text(f"▶ step {number}{of} · {name} · {duration(elapsed)} · {human_bytes(nbytes)}",
                style="dim")


def run_summary(message: str, exit_code: int, elapsed: float, nbytes: int) -> Text:
    """The final line after a command: what happened and which exit code bbx returns."""
    style = "green" if exit_code == 0 else "red"
    return Text.assemble((message, style), (f" · {duration(elapsed)} · {human_bytes(nbytes)}"
                                            f" · exit {exit_code}", "dim"))


# ---------------------------------------------------------------------------- builds

_RESULT_STYLES = {"success": "green", "warnings": "yellow", "failure": "red", "skipped": "dim",
                  "exception": "magenta", "retry": "cyan", "cancelled": "magenta",
                  "running": "blue", "queued": "dim"}


def result_text(name: str | None) -> Text:
    """A result name in upper case, coloured as Buildbot's web UI colours it."""
    name = str(name or "?")
    return Text(name.upper(), style=_RESULT_STYLES.get(name, ""))


def step_rule(info: dict):
    """The rule that opens a step's output: '── step 2 · compile ──' (skipped steps say so)."""
    from rich.rule import Rule

    title = f"step {info.get('number')} · {info.get('name')}"
    if info.get("result_name") == "skipped":
        title += " · skipped"
    return Rule(Text(title, style="bold"), align="left")


def build_summary(info: dict, exit_code: int) -> RenderableType:
    """The table of step results and the final line of a build."""
    table = Table(title=f"build {info.get('build_id')} · #{info.get('number')} of "
                        f"{info.get('builder')} on {info.get('slave')}",
                  title_justify="left", title_style="bold")
    for column in ("#", "step", "result", "rc", "time"):
        table.add_column(column)
    for step in info.get("steps") or []:
        rc = step.get("rc")
        table.add_row(str(step.get("number")), Text(str(step.get("name"))),
                      result_text(step.get("result_name")), "" if rc is None else str(rc),
                      duration(float(step.get("duration") or 0.0)))
    name = str(info.get("result_name"))
    line = Text.assemble("build ", (name.upper(), _RESULT_STYLES.get(name, "")),
                         (f" · {duration(float(info.get('duration') or 0.0))} · exit {exit_code}",
                          "dim"))
    if info.get("cancelled"):
        line.append(f" · {info['cancelled']}", style="dim")
    if info.get("lost"):
        line.append(f" · {info['lost']}", style="dim")
    return Group(table, line)


def _clock(when: float | None) -> str:
    if when is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def builds_table(builds: list[dict], queued: list[dict] | None = None) -> Table:
    """Queued requests first, then builds newest first: id, builder, slave, result, started,
    duration; and the master that ran each, when builds come from several masters."""
    table = Table(title="builds", title_justify="left", title_style="bold")
    several = len({b.get("master") for b in builds if b.get("master")}) > 1
    columns = ["id", "builder", "#", "slave", "result", "started", "duration"]
    if several:
        columns.insert(4, "master")
    for column in columns:
        table.add_column(column)
    for request in queued or []:
        cells = [Text(f"r{request.get('id')}", style="dim"), Text(str(request.get("builder"))),
                 "", "", result_text("queued"), _clock(request.get("submitted_at")), ""]
        if several:
            cells.insert(4, "")
        table.add_row(*cells)
    for build in builds:
        result = result_text(build.get("result_name"))
        if build.get("state") == "interrupted":
            result.append(" (interrupted)", style="dim")
        took = build.get("duration")
        cells = [str(build.get("id")), Text(str(build.get("builder"))),
                 str(build.get("number")), Text(str(build.get("slave") or "—")), result,
                 _clock(build.get("started_at")),
                 "—" if took is None else duration(float(took))]
        if several:
            cells.insert(4, Text(str(build.get("master") or "—")))
        table.add_row(*cells)
    return table
