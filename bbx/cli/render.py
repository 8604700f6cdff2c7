"""What the operator sees: pure functions from the master's answers to rich renderables.

Render them to `Console(record=True, width=...)` to test. The sinks that paint a running
command's output live in bbx/cli/sinks.py.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bbx.pb.secrets import is_secret_name

# What the operator sees instead of a secret-looking value (bbx/pb/secrets.py decides which).
MASK = "********"


def mask_environ(environ: dict[str, Any] | None, show: bool) -> dict[str, Any]:
    """A copy of `environ` with secret-looking values replaced by MASK unless `show`."""
    environ = dict(environ or {})
    if show:
        return environ
    return {name: (MASK if is_secret_name(str(name)) else value) for name, value in environ.items()}


# An environment line in a command's header, as the slave logs it: "  NAME=value".
_HEADER_ENV_LINE = re.compile(r"^([ \t]+)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.MULTILINE)


def mask_header(text: str, show: bool) -> str:
    """A command header with the values of secret-looking "  NAME=value" lines masked."""
    if show or "=" not in text:
        return text
    return _HEADER_ENV_LINE.sub(
        lambda m: f"{m[1]}{m[2]}={MASK}" if is_secret_name(m[2]) else m[0], text)


def masked_info(answer: dict, show_secrets: bool) -> dict:
    """The master's `info` answer with info.environ masked (for tables and --json alike)."""
    answer = dict(answer)
    info = dict(answer.get("info") or {})
    if "environ" in info:
        info["environ"] = mask_environ(info["environ"], show_secrets)
    answer["info"] = info
    return answer


# ---------------------------------------------------------------------------- small formats


def relative_time(then: float | None, now: float) -> str:
    """'12s ago', '3m ago', '5h ago', '2d ago'; '—' for never."""
    if then is None:
        return "—"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def human_bytes(count: int) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB ..."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


def duration(seconds: float) -> str:
    """0.42s, 12.3s, 4m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def to_json(value: Any) -> str:
    """Plain JSON text for --json output (no markup, stable key order)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


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
    columns = ["name", "connected", "since", "builders", "dialect", "last message"]
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
    """One row per builder: its slaves, which are attached, its builddir."""
    table = Table(title="builders", title_justify="left", title_style="bold")
    for column in ("name", "slaves", "attached", "builddir"):
        table.add_column(column)
    for builder in builders:
        attached = builder.get("attached") or []
        table.add_row(
            Text(str(builder.get("name"))),
            Text(", ".join(builder.get("slaves") or [])),
            Text(", ".join(attached), style="green") if attached else Text("none", style="red"),
            Text(str(builder.get("builddir", ""))),
        )
    return table


# ---------------------------------------------------------------------------- run


def run_status(where: str, elapsed: float, nbytes: int) -> Text:
    """The live status line under a running command's output ('where': 'slave x', 'builder b')."""
    return Text(f"▶ running on {where} · {duration(elapsed)} · {human_bytes(nbytes)}", style="dim")


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
