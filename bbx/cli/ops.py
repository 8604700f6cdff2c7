"""Operator commands: bbx ping | info | slaves | builders | masters (run.py has run; builds.py
has build; history.py has builds | log | cancel).

Each command parses its options, then imports Twisted, rich and the client inside its body,
so `bbx --help` stays fast. Talking to the master is bbx/cli/client.py's job; what the
operator sees is bbx/cli/render.py's.
"""

from typing import Annotated

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, JsonOption, MasterDirOption,
                     MasterOption, PasswordOption, TimeoutOption, UserOption)
from .output import conn, consoles, plain, print_json

# How long the master may take per ping: its own deadline for the slave's answer
# (bbx/master/builder.py PING_TIMEOUT, docs/protocol.md §2.4) plus a margin for the round trip.
PING_ANSWER_SLACK = 10.0 + 2.0
# Past this many rows (or off a terminal) `bbx slaves` prints plain columns: rich needs ~0.6 ms
# a row to lay out a table (6.5 s of CPU for 10,000 slaves, measured), plain text ~10 µs.
PLAIN_ABOVE = 1000


def register(app: typer.Typer) -> None:
    """Add the operator commands to the top-level app."""
    app.command("ping")(ping)
    app.command("info")(info)
    app.command("slaves")(slaves)
    app.command("builders")(builders)
    app.command("masters")(masters)


# ---------------------------------------------------------------------------- ping / info / lists


def ping(
    builder: Annotated[str, typer.Argument(help="The builder whose slave to ping.")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, help="How many pings.")] = 1,
    max_skew: Annotated[float, typer.Option(
        "--max-skew", min=0, help="Warn when the slave's clock is further than this many "
        "seconds from the master's.")] = 2.0,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Ping the slave attached to BUILDER: round-trip times and the clock offsets."""
    from .client import call

    async def conversation(perspective, reactor):
        from bbx.pb.clock import offset

        sent = reactor.seconds()
        answer = await perspective.callRemote("ping", builder, count)
        received = reactor.seconds()
        answer = dict(answer)
        if "received_at" in answer:
            answer["local_offset"] = offset(sent, answer["received_at"], answer["answered_at"],
                                            received)
        known = [o for o in answer.get("slave_offsets") or [] if o is not None]
        answer["slave_offset"] = median(known) if known else None
        return answer

    from .text import median, ping_lines, skew_warnings

    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  conversation,
                  answer_within=timeout + count * PING_ANSWER_SLACK, what="the ping")
    warnings = skew_warnings(answer, max_skew)
    if json:
        answer["warnings"] = warnings
        print_json(answer)
    else:
        for line in ping_lines(answer):
            plain(line)
    import sys

    for line in warnings:
        sys.stderr.write(f"bbx: {line}\n")


def info(
    slave: Annotated[str | None, typer.Argument(help="The slave (default: the only attached one).")] = None,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Show environment values whose names look secret (TOKEN, KEY, ...).")] = False,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Show what an attached slave reported about itself: system, admin, environment, commands."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("info", slave),
                  answer_within=timeout, what="the info call")
    from .render import info_report, masked_info

    if json:
        print_json(masked_info(answer, show_secrets))
        return
    consoles()[0].print(info_report(answer, show_secrets=show_secrets), highlight=False)


def slaves(
    connected: Annotated[bool, typer.Option("--connected", help="Only the connected slaves.")] = False,
    disconnected: Annotated[bool, typer.Option(
        "--disconnected", help="Only the slaves that are not connected.")] = False,
    count: Annotated[bool, typer.Option(
        "--count", help="Only the counts: configured, connected, disconnected.")] = False,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List the configured slaves, whether they are connected, and how many of each."""
    from .client import call
    from .errors import UsageError

    if connected and disconnected:
        raise UsageError("--connected and --disconnected exclude each other; give one")
    wanted = True if connected else (False if disconnected else None)

    async def conversation(perspective, reactor):
        if count:
            return [], await perspective.callRemote("slaves", None, True)
        listed = await perspective.callRemote("slaves", wanted)
        if wanted is None:
            up = sum(1 for s in listed if s.get("connected"))
            return listed, {"configured": len(listed), "connected": up,
                            "disconnected": len(listed) - up}
        return listed, await perspective.callRemote("slaves", None, True)

    answer, summary = call(conn(master_dir, master, user, password, timeout, ca, fingerprint,
                                insecure), conversation,
                           answer_within=timeout, what="the slaves call")
    if json:
        print_json(summary if count else answer)
        return
    if answer:
        out = consoles()[0]
        if out.is_terminal and len(answer) <= PLAIN_ABOVE:
            from .render import slaves_table

            out.print(slaves_table(answer), highlight=False)
        else:
            from .text import slaves_lines

            for line in slaves_lines(answer):
                plain(line)
    plain(f"{summary['configured']} configured: {summary['connected']} connected, "
          f"{summary['disconnected']} disconnected")


def builders(
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List the configured builders, their slaves and which of those are attached."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("builders"),
                  answer_within=timeout, what="the builders call")
    if json:
        print_json(answer)
        return
    from .render import builders_table

    consoles()[0].print(builders_table(answer), highlight=False)


def masters(
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List the masters sharing this master's store, with the age of their last heartbeat."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("masters"),
                  answer_within=timeout, what="the masters call")
    if json:
        print_json(answer)
        return
    from .render import masters_table

    consoles()[0].print(masters_table(answer), highlight=False)
