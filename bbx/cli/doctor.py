"""`bbx doctor [--master-dir DIR | --master ...] [SLAVE_DIR]`: why can't I reach the master?

Without SLAVE_DIR it checks the operator's way in (the control user of master.toml or
--user/--password); with SLAVE_DIR, the slave's: its slave.toml's endpoint, name and password,
logging in as that slave with a stand-in Bot that takes no builders (bbx/cli/diagnose.py).

Telling an unknown name from a wrong password: the master answers both with the same
UnauthorizedLogin, on purpose — a different answer would tell a guesser which names exist.
The master's log says which (it is the operator's), and doctor, given the master's directory
(--master-dir, or run in it), compares the name and password with master.toml itself. So the
operator on the master's host learns exactly what is wrong, and a peer learns nothing.
"""

import sys
from pathlib import Path
from typing import Annotated

import typer

from .client import (CONFIG_FILE, CaOption, FingerprintOption, InsecureOption, JsonOption,
                     MasterDirOption, MasterOption, PasswordOption, TimeoutOption, UserOption)
from .errors import EXIT_FAILED, UsageError
from .output import conn, print_json

DOCTOR_HELP = """Diagnose, stage by stage, why a slave (SLAVE_DIR) or an operator cannot reach the master.

Stages: resolve, tcp, tls (tls:/ssl: endpoints: the certificate, checked as --ca, --fingerprint or slave.toml say), pb, login (unknown name, wrong password, duplicate session told apart where the master's master.toml is at hand), attach and builders (with SLAVE_DIR), rtt, clock. Each prints ✓ or ✗; a failure says the likely cause and the fix, and the later stages are skipped.

\b
Exit status: 0 every stage passed; otherwise the failed stage's: 3 cannot connect, 4 login refused, 6 the master's TLS certificate refused, 1 any other (clock skew, a master error), 2 bad usage.
"""


def register(app: typer.Typer) -> None:
    app.command("doctor", help=DOCTOR_HELP)(doctor)


def _configured(master_dir: Path | None, slave: bool) -> dict | None:
    """name -> password of master.toml's slaves (or control users), when it can be read."""
    if master_dir is None or not (master_dir / CONFIG_FILE).is_file():
        return None
    import tomllib  # here: registering the command (every `bbx --help`) should not load it

    try:
        data = tomllib.loads((master_dir / CONFIG_FILE).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if slave:
        entries = data.get("slaves") or []
    else:
        entries = (data.get("control") or {}).get("users") or []
    return {str(e.get("name")): str(e.get("password")) for e in entries if isinstance(e, dict)}


def doctor(
    slave_dir: Annotated[Path | None, typer.Argument(
        metavar="[SLAVE_DIR]", help="A slave directory: check that slave's way in instead.")] = None,
    max_skew: Annotated[float, typer.Option(
        "--max-skew", min=0, help="Fail the clock stage above this many seconds of offset.")] = 2.0,
    json: JsonOption = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    from .client import LOGIN_TIMEOUT, load_twisted, resolve, run_reactor, uses_tls
    from .target import endpoint_of_master, trust_for

    if master_dir is None and master is None and (Path.cwd() / CONFIG_FILE).is_file():
        master_dir = Path.cwd()
    if slave_dir is not None:
        from bbx.slave import basedir

        try:
            config = basedir.load(slave_dir)
        except basedir.BasedirError as e:
            raise UsageError(str(e)) from None
        endpoint = config.connection
        given = bool(ca or fingerprint or insecure)
        if master is not None:
            endpoint = endpoint_of_master(master, given or uses_tls(config.connection))
        if not given:  # the slave's own check (slave.toml), unless the operator gave one
            ca, fingerprint, insecure = config.tls.ca, config.tls.fingerprint, config.tls.insecure
        trust = trust_for(conn(None, master, None, None, ca=ca, fingerprint=fingerprint,
                               insecure=insecure), endpoint, None)
        who = dict(endpoint=endpoint, name=config.name, password=config.password, slave=True,
                   configured=_configured(master_dir, True), tls=trust, tags=config.tags)
        local = _local_slave(config)
    else:
        target = resolve(conn(master_dir, master, user, password, timeout or LOGIN_TIMEOUT,
                              ca, fingerprint, insecure))
        who = dict(endpoint=target.endpoint, name=target.user, password=target.password,
                   slave=False, configured=_configured(master_dir, False), tls=target.tls)
        local = None
    # Twisted only now, once it is known whether this master needs its TLS (client.load_twisted).
    load_twisted(tls=uses_tls(who["endpoint"]))
    from .diagnose import Who

    who = Who(**who)
    stages = run_reactor(lambda reactor: _diagnose(reactor, who, timeout, max_skew))
    failed = next((s for s in stages if not s.ok), None)
    code = failed.exit if failed is not None else 0
    if json:
        print_json({"endpoint": who.endpoint, "as": ("slave " if who.slave else "control user ")
                    + who.name, "local_slave": local, "ok": failed is None, "exit": code,
                    "stages": [{"name": s.name, "ok": s.ok, "detail": s.detail, "cause": s.cause,
                                "fix": s.fix, "seconds": s.seconds, **s.data} for s in stages]})
    else:
        _print(who, stages, local)
    if failed is not None:
        sys.stderr.write(f"bbx: doctor: {failed.name} failed: {failed.detail}\n")
    raise typer.Exit(code)


def _local_slave(config) -> dict | None:
    from bbx import pidfile
    from bbx.slave import state as slave_state
    from bbx.slave.basedir import PID_NAME

    pid = pidfile.running(Path(config.basedir) / PID_NAME)
    state = slave_state.read(config.basedir) if pid else None
    return {"pid": pid, "state": (state or {}).get("state") if state and state.get("pid") == pid
            else None}


async def _diagnose(reactor, who, timeout: float, max_skew: float) -> list:
    from . import diagnose as d

    stages = []
    kind = d.endpoint_parts(who.endpoint)[0]
    steps = [lambda: d.resolve_stage(reactor, who.endpoint, timeout),
             lambda: d.tcp_stage(reactor, who.endpoint, timeout)]
    if kind in ("ssl", "tls"):
        steps.append(lambda: d.tls_stage(reactor, who.endpoint, who.tls, timeout))
    for step in steps:
        stage = await step()
        stages.append(stage)
        if not stage.ok:
            return stages
    stage, connected = await d.pb_stage(reactor, who.endpoint, timeout, who.tls)
    stages.append(stage)
    if not stage.ok:
        return stages
    factory, _root = connected
    try:
        stage, perspective, mind = await d.login_stage(reactor, factory, who, timeout)
        stages.append(stage)
        if not stage.ok:
            return stages
        if who.slave:
            offered = mind.offered
            stages.append(d.Stage("attach", offered is not None,
                                  "the master ran the attach sequence" if offered is not None
                                  else "the master accepted the login without asking for builders",
                                  "" if offered is not None else "not a bbx or Buildbot master?",
                                  "" if offered is not None else "check the endpoint", exit=EXIT_FAILED))
            if offered is None:
                return stages
            stages.append(d.Stage("builders", True, ", ".join(offered) if offered else
                                  "none: no builder selects this slave (builders.slaves in master.toml, by name or tags)",
                                  data={"builders": offered}))
        else:
            builders = await perspective.callRemote("builders")
            names = [b.get("name") for b in builders]
            stages.append(d.Stage("builders", True, ", ".join(names) or "none configured",
                                  data={"builders": names}))
        stages.append(await d.rtt_stage(reactor, perspective, who))
        stages.append(await d.clock_stage(reactor, perspective, max_skew))
    finally:
        if factory._broker is not None and factory._broker.transport is not None:
            factory._broker.transport.loseConnection()
    return stages


def _print(who, stages, local) -> None:
    out = sys.stdout
    role = "slave" if who.slave else "control user"
    out.write(f"bbx doctor: {who.endpoint} as {role} {who.name}\n")
    if local and local.get("pid"):
        out.write(f"  note: this slave runs here (pid {local['pid']}, "
                  f"{local.get('state') or 'state unknown'})\n")
    for s in stages:
        took = f" ({s.seconds * 1000:.1f} ms)" if s.seconds is not None else ""
        out.write(f"{'✓' if s.ok else '✗'} {s.name:<9} {s.detail}{took}\n")
        if not s.ok:
            if s.cause:
                out.write(f"    cause: {s.cause}\n")
            if s.fix:
                out.write(f"    fix:   {s.fix}\n")
    out.flush()
