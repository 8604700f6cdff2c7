"""Operator commands: bbx ping | info | slaves | builders | masters (and, via run.py, run; via
builds.py, build | builds | log | cancel).

Each command parses its options, then imports Twisted, rich and the client inside its body,
so `bbx --help` stays fast. Talking to the master is bbx/cli/client.py's job; what the
operator sees is bbx/cli/render.py's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, JsonOption,
                     MasterDirOption, MasterOption, PasswordOption, UserOption)
from .output import conn, consoles, print_json


def register(app: typer.Typer) -> None:
    """Add the operator commands to the top-level app."""
    app.command("ping")(ping)
    app.command("info")(info)
    app.command("slaves")(slaves)
    app.command("builders")(builders)
    app.command("masters")(masters)
    from . import builds, run

    run.register(app)
    builds.register(app)


# ---------------------------------------------------------------------------- ping / info / lists


def ping(
    builder: Annotated[str, typer.Argument(help="The builder whose slave to ping.")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, help="How many pings.")] = 1,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Ping the slave attached to BUILDER and print round-trip times."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("ping", builder, count))
    if json:
        print_json(answer)
        return
    from .render import ping_report

    consoles()[0].print(ping_report(answer), highlight=False)


def info(
    slave: Annotated[str | None, typer.Argument(help="The slave (default: the only attached one).")] = None,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Show environment values whose names look secret (TOKEN, KEY, ...).")] = False,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Show what an attached slave reported about itself: system, admin, environment, commands."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("info", slave))
    from .render import info_report, masked_info

    if json:
        print_json(masked_info(answer, show_secrets))
        return
    consoles()[0].print(info_report(answer, show_secrets=show_secrets), highlight=False)


def slaves(
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List the configured slaves and whether they are connected."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("slaves"))
    if json:
        print_json(answer)
        return
    from .render import slaves_table

    consoles()[0].print(slaves_table(answer), highlight=False)


def builders(
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """List the configured builders, their slaves and which of those are attached."""
    from .client import call

    answer = call(conn(master_dir, master, user, password, ca, fingerprint, insecure),
                  lambda perspective, reactor: perspective.callRemote("builders"))
    if json:
        print_json(answer)
        return
    from .render import builders_table

    consoles()[0].print(builders_table(answer), highlight=False)


def masters(
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
) -> None:
    """List the masters sharing this master's store, with the age of their last heartbeat."""
    from .client import call

    answer = call(conn(master_dir, master, user, password),
                  lambda perspective, reactor: perspective.callRemote("masters"))
    if json:
        print_json(answer)
        return
    from .render import masters_table

    consoles()[0].print(masters_table(answer), highlight=False)
