"""bbx slave pause | drain | resume NAME — the operator's farm controls (issue 11).

Each is one control call (bbx/master/control_farm.py) on the master; the state is the
master's, kept in its store. Imports Twisted only inside the command functions.
"""

from typing import Annotated

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, JsonOption, MasterDirOption,
                     MasterOption, PasswordOption, TimeoutOption, UserOption)
from .output import conn, plain, print_json

SlaveName = Annotated[str, typer.Argument(metavar="NAME", help="The slave's name on the master "
                                                             "(`bbx slaves` lists them).")]

_DONE = {
    "pause": "paused: it takes no new builds; what runs on it goes on",
    "drain": "draining: it takes no new builds and shuts down once idle; it stays paused "
             "until `bbx slave resume`",
    "resume": "resumed: it takes work again",
}


def register(app: typer.Typer) -> None:
    """Add pause, drain and resume to the `bbx slave` group."""
    app.command("pause", help="Pause slave NAME on the master: no new builds or commands "
                "start on it; running ones go on. Survives a master restart.")(pause)
    app.command("drain", help="Drain slave NAME: pause it, then shut it down gracefully once "
                "its running builds have ended. It stays paused when it comes back.")(drain)
    app.command("resume", help="Resume slave NAME: it takes work again (a drain not yet "
                "carried out is called off).")(resume)


def _control(action: str, name: str, json: bool, options) -> None:
    from .client import call

    answer = call(options, lambda perspective, reactor: perspective.callRemote(action, name),
                  answer_within=options.timeout, what=f"the {action} call")
    if json:
        print_json(answer)
        return
    line = f"slave {answer['name']} {_DONE[action]}"
    if action == "drain" and answer.get("state") == "paused":
        line = f"slave {answer['name']} is not attached: paused until `bbx slave resume`"
    running = answer.get("running_builds") or []
    if running and action != "resume":
        line += f" (running: build {', '.join(map(str, running))})"
    plain(line)


def pause(
    name: SlaveName, json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    _control("pause", name, json, conn(master_dir, master, user, password, timeout, ca,
                                       fingerprint, insecure))


def drain(
    name: SlaveName, json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    _control("drain", name, json, conn(master_dir, master, user, password, timeout, ca,
                                       fingerprint, insecure))


def resume(
    name: SlaveName, json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    _control("resume", name, json, conn(master_dir, master, user, password, timeout, ca,
                                        fingerprint, insecure))
