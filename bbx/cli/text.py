"""Plain-text renderings of short answers (ping, clock offsets): no rich import, so the
commands that print a few lines start fast. Tables stay in render.py."""

from __future__ import annotations

from bbx.pb.clock import DEFAULT_SKEW_WARNING


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def seconds(value: float) -> str:
    """0.4 ms, 12.3 ms, 1.250 s."""
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.3f} s"


def skew(name: str, offset: float, reference: str) -> str:
    """'slave linux1's clock is 3.1 ms ahead of the master's'."""
    direction = "ahead of" if offset >= 0 else "behind"
    return f"{name}'s clock is {seconds(abs(offset))} {direction} {reference}'s"


def ping_lines(answer: dict) -> list[str]:
    """Per-ping round-trip times in ms, a min/avg/max summary and the clock offsets."""
    rtts = [float(r) * 1000 for r in answer.get("rtts", [])]
    lines = [f"ping builder {answer.get('builder')} on slave {answer.get('slave')}"]
    for i, rtt in enumerate(rtts, 1):
        lines.append(f"  reply {i}: {rtt:.2f} ms")
    if rtts:
        lines.append(f"{len(rtts)} {'reply' if len(rtts) == 1 else 'replies'}: "
                     f"min {min(rtts):.2f} / avg {sum(rtts) / len(rtts):.2f} / "
                     f"max {max(rtts):.2f} ms")
    slave = answer.get("slave_offset")
    if slave is not None:
        lines.append(f"clock: {skew('slave ' + str(answer.get('slave')), slave, 'the master')} "
                     f"(± {seconds(min(answer.get('rtts') or [0]) / 2)})")
    else:
        lines.append("clock: the slave does not report its clock (buildbot-worker); offset unknown")
    local = answer.get("local_offset")
    if local is not None:
        lines.append(f"clock: the master's clock is {seconds(abs(local))} "
                     f"{'ahead of' if local >= 0 else 'behind'} this host's")
    return lines


def skew_warnings(answer: dict, limit: float = DEFAULT_SKEW_WARNING) -> list[str]:
    """One warning per clock that is further off than `limit` seconds."""
    out = []
    slave = answer.get("slave_offset")
    if slave is not None and abs(slave) > limit:
        out.append(f"warning: {skew('slave ' + str(answer.get('slave')), slave, 'the master')}, "
                   f"more than {limit:g} s: build timestamps from the two will disagree; "
                   "synchronise the clocks (NTP)")
    return out


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


def run_summary_line(message: str, exit_code: int, elapsed: float, nbytes: int) -> str:
    """render.run_summary as plain text, for a pipe."""
    return f"{message} · {duration(elapsed)} · {human_bytes(nbytes)} · exit {exit_code}"


def relative_time(then: float | None, now: float) -> str:
    """'12s ago', '3m ago', '5h ago', '2d ago'; '—' for never."""
    if then is None:
        return "—"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def slave_state(slave: dict) -> str:
    """The state column of `bbx slaves`: idle, building (build N), paused, draining (with the
    builds still running), disconnected; "-" from a master too old to say."""
    state = slave.get("state")
    if not state:
        return "-"
    builds = ", ".join(str(b) for b in slave.get("running_builds") or [])
    if state == "building":
        return f"building (build {builds})" if builds else "building"
    if state in ("paused", "draining") and builds:
        return f"{state} (build {builds} running)"
    if state == "disconnected" and slave.get("master"):
        return "elsewhere"  # attached to another master of the shared store
    return str(state)


def builder_slaves(builder: dict) -> str:
    """What a builder selects its slaves by: names, "tags a+b", or both."""
    parts = []
    if builder.get("slaves"):
        parts.append(", ".join(builder["slaves"]))
    if builder.get("tags"):
        parts.append("tags " + "+".join(builder["tags"]))
    return " or ".join(parts) or "-"


def slaves_lines(slaves: list[dict], now: float | None = None) -> list[str]:
    """`bbx slaves` as plain aligned columns (for pipes and very long lists)."""
    import time

    now = time.time() if now is None else now

    def ago(then):
        return "-" if then is None else relative_time(then, now)

    # Several masters: a slave attached to another master is "elsewhere", and a column says which.
    elsewhere = any(not s.get("connected") and s.get("master") for s in slaves)
    rows = [("name", "connected", "state", "since", "builders", "dialect", "last message")
            + (("master",) if elsewhere else ())]
    for s in slaves:
        up = bool(s.get("connected"))
        there = not up and bool(s.get("master"))
        rows.append((str(s.get("name")), "yes" if up else "elsewhere" if there else "no",
                     slave_state(s),
                     ago(s.get("connected_since")) if up or there else "-",
                     ",".join(s.get("builders") or []) or "-", str(s.get("dialect") or "-"),
                     ago(s.get("last_message")))
                    + ((str(s.get("master") or "-"),) if elsewhere else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
