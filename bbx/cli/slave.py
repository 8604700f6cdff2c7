"""bbx slave — create, start, stop and inspect a slave.

`bbx slave stop` on a slave that is not running prints "not running" and exits 0, as
`buildbot-worker stop` does, so scripts can call it unconditionally.
"""

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from bbx.pb.liveness import KEEPALIVE_INTERVAL

from .errors import (EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_UNTRUSTED, BbxError,
                     UsageError)
from .output import print_json
from .roleopts import (HttpOption, LogBackupsOption, LogFormatOption, LogMaxBytesOption, Waiting,
                       check_http, child_args, log_options)

app = typer.Typer(help="Create, start, stop and inspect a slave.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

DAEMON_START_WAIT = 10.0  # buildbot-worker start's wait (docs/protocol.md §8)
STOP_WAIT = 15.0

CREATE_HELP = """Create a slave directory DIR.

Two forms:

  bbx slave create DIR MASTER NAME PASSWORD

  bbx slave create DIR --connection-string ENDPOINT NAME PASSWORD

MASTER is host[:port] or \\[v6addr][:port] (port 9989 by default); ENDPOINT is any Twisted
client endpoint string, e.g. tcp:host=ci.example.org:port=9989. Writes DIR/slave.toml
(mode 0600), DIR/info/admin and DIR/info/host.

Several masters sharing one farm: repeat --master HOST[:PORT] (or --connection-string) and
give just NAME PASSWORD; the slave attaches to the first that answers and moves to the next
when its master is gone.

TLS: --use-tls checks the master's certificate against the system's CAs; --ca FILE against
your CA; --fingerprint SHA256 pins the master's own certificate (as printed by
`bbx master create --tls`). A failed check means no connection, and a retry.
"""


def _running_pid(directory: Path) -> Optional[int]:
    from bbx import pidfile
    from bbx.slave.basedir import PID_NAME

    return pidfile.running(directory / PID_NAME)


def _load(directory: Path):
    from bbx.slave import basedir

    try:
        config = basedir.load(directory)
    except basedir.BasedirError as e:
        raise UsageError(str(e)) from None
    for connection in config.masters:
        _check_connection(connection, f"{config.path(basedir.CONFIG_NAME)}: connection",
                          config.tls)
    return config


def _trust(ca: Optional[Path], fingerprint: Optional[str], insecure: bool):
    """The --ca / --fingerprint / --insecure options as a TlsTrust; UsageError when they clash."""
    from bbx.pb.tls import TlsTrust, normalize_fingerprint

    pin = None
    if fingerprint:
        try:
            pin = normalize_fingerprint(fingerprint)
        except ValueError as e:
            raise UsageError(f"--fingerprint: {e}") from None
    try:
        return TlsTrust(ca=str(ca.absolute()) if ca else None, fingerprint=pin, insecure=insecure)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_connection(description: str, where: str, trust=None) -> None:
    from twisted.internet import reactor

    from bbx.pb.endpoints import client_endpoint

    try:
        client_endpoint(reactor, description, trust)
    except ValueError as e:
        text = str(e)
        fix = "" if ";" in text else "; use e.g. tcp:host=HOST:port=9989"
        raise UsageError(f"{where}: {text}{fix}") from None


@app.command(help=CREATE_HELP)
def create(
    directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory (created if missing)."),
    args: List[str] = typer.Argument(..., metavar="[MASTER] NAME PASSWORD",
                                     help="MASTER (host[:port]) unless --connection-string is given, "
                                          "then the slave's NAME and PASSWORD."),
    connection_string: Optional[List[str]] = typer.Option(
        None, "--connection-string", metavar="ENDPOINT",
        help="A Twisted client endpoint string to reach the master; replaces MASTER "
             "(repeatable: several masters)."),
    master_option: Optional[List[str]] = typer.Option(
        None, "--master", metavar="HOST[:PORT]",
        help="Another master of the same farm, tried in order after MASTER (repeatable; "
             "with --master, MASTER may be left out)."),
    keepalive: int = typer.Option(KEEPALIVE_INTERVAL, "--keepalive", help="Seconds between keepalives to the master (0 = off)."),
    keepalive_timeout: float = typer.Option(
        0, "--keepalive-timeout", help="Seconds of master silence before reconnecting (0 = 2 x keepalive + 30)."),
    maxdelay: int = typer.Option(300, "--maxdelay", help="Longest wait between reconnection attempts, seconds."),
    umask: str = typer.Option("", "--umask", help="File-creation mask, e.g. 0o022 (default: inherit)."),
    allow_shutdown: str = typer.Option("", "--allow-shutdown", metavar="signal|file",
                                       help="Allow graceful shutdown by SIGHUP (signal) or by touching "
                                            "DIR/shutdown.stamp (file)."),
    use_tls: bool = typer.Option(False, "--use-tls", help="Connect to MASTER with TLS, checking its "
                                 "certificate against the system's CAs unless --ca or --fingerprint."),
    ca: Optional[Path] = typer.Option(None, "--ca", metavar="FILE",
                                      help="Trust the master's certificate if this PEM CA file signed it "
                                           "(and it names the host). Implies --use-tls."),
    fingerprint: Optional[str] = typer.Option(
        None, "--fingerprint", metavar="SHA256",
        help="Trust only the master certificate with this SHA-256 fingerprint (printed by "
             "`bbx master create --tls`). Implies --use-tls."),
    insecure: bool = typer.Option(False, "--insecure", help="Use TLS without checking the master's "
                                  "certificate (anyone in the middle can read everything)."),
    redact: List[str] = typer.Option(
        [], "--redact", metavar="GLOB",
        help="Also treat variables matching GLOB (e.g. DEPLOY_*; any case) as secret: hidden in "
             "what the slave reports, replaced by <redacted> in command output. Repeatable."),
    commands: str = typer.Option(
        "all", "--commands", metavar="LIST",
        help="Commands to advertise and accept, comma-separated (e.g. uploadFile,downloadFile,stat); "
             "default all."),
    cgroup: bool = typer.Option(True, "--cgroup/--no-cgroup",
                                help="Run each command in its own cgroup where the host allows it."),
    tag: List[str] = typer.Option(
        [], "--tag", metavar="TAG",
        help="A tag this slave offers the master (e.g. linux, x86_64, docker); builders that "
             "select slaves by tags may use it. Repeatable."),
    info_admin: Optional[str] = typer.Option(None, "--info-admin", help="Contents of DIR/info/admin."),
    info_host: Optional[str] = typer.Option(None, "--info-host", help="Contents of DIR/info/host."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing slave.toml."),
) -> None:
    from bbx.pb.endpoints import master_endpoint
    from bbx.slave import basedir

    if use_tls and connection_string:
        raise UsageError("--use-tls applies to MASTER; with --connection-string use a tls: endpoint")
    extra = list(master_option or [])
    if len(args) == 3:
        master, name, password = args
        extra.insert(0, master)
    elif len(args) == 2 and (connection_string or extra):
        name, password = args
    elif connection_string or extra:
        raise UsageError("with --connection-string or --master give NAME PASSWORD after DIR "
                         f"(got {len(args)} argument(s))")
    else:
        raise UsageError("give MASTER NAME PASSWORD after DIR (or --connection-string ENDPOINT "
                         f"NAME PASSWORD); got {len(args)} argument(s)")
    trust = _trust(ca, fingerprint, insecure)
    tls_wanted = use_tls or bool(ca or fingerprint or insecure)
    connections = []
    for text in extra:
        try:
            connections.append(master_endpoint(text, use_tls=tls_wanted))
        except ValueError as e:
            raise UsageError(f"{e}; give MASTER as host or host:port, e.g. ci.example.org:9989") from None
        _check_connection(connections[-1], "MASTER", trust)
    for text in connection_string or []:
        _check_connection(text, "--connection-string", trust)
        connections.append(text)
    if len(set(connections)) != len(connections):
        raise UsageError("the same master is given twice; list each master once")
    connection = connections[0] if len(connections) == 1 else connections
    if allow_shutdown not in basedir.ALLOW_SHUTDOWN:
        raise UsageError(f"--allow-shutdown must be 'signal' or 'file', not {allow_shutdown!r}")
    for opt, value in (("--keepalive", keepalive), ("--maxdelay", maxdelay),
                       ("--keepalive-timeout", keepalive_timeout)):
        if value < 0:
            raise UsageError(f"{opt} must be >= 0, not {value}")
    try:
        basedir.parse_umask(umask)
    except ValueError as e:
        raise UsageError(f"--umask: {e}") from None
    from bbx.pb.secrets import check_glob
    from bbx.slave.commands import check_allowed

    try:
        globs = [check_glob(g) for g in redact]
    except ValueError as e:
        raise UsageError(f"--redact: {e}") from None
    from bbx.pb.tags import check_tags

    try:
        tags = check_tags(tag)
    except ValueError as e:
        raise UsageError(f"--tag: {e}") from None
    allowed = None
    if commands.strip().lower() != "all":
        try:
            allowed = check_allowed(commands.split(","))
        except ValueError as e:
            raise UsageError(f"--commands: {e}") from None
    try:
        config = basedir.create(directory, name=name, password=password, connection=connection,
                                keepalive=keepalive, keepalive_timeout=keepalive_timeout,
                                maxdelay=maxdelay, umask=umask, allow_shutdown=allow_shutdown,
                                redact=globs, commands=allowed, cgroup=cgroup, tags=tags,
                                info_admin=info_admin, info_host=info_host,
                                tls_ca=str(trust.ca or ""), tls_fingerprint=trust.fingerprint or "",
                                tls_insecure=trust.insecure, force=force)
    except basedir.BasedirError as e:
        raise UsageError(str(e)) from None
    typer.echo(f"created slave {config.name} in {config.basedir} "
               f"(master{'s' if len(config.masters) > 1 else ''} {', '.join(config.masters)})")
    if config.tls_insecure:
        typer.echo("warning: the master's TLS certificate will not be checked (--insecure)")
    typer.echo(f"edit {config.path('info/admin')} and {config.path('info/host')}, then run: "
               f"bbx slave start {directory}")


@app.command(help="Run the slave in DIR: in the foreground (logging to the terminal and "
                  "DIR/slave.log) or with --daemon in the background. SIGTERM stops it cleanly; "
                  "SIGHUP asks the master for a graceful shutdown (--allow-shutdown signal) or "
                  "stops it cleanly.")
def start(
    directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory."),
    daemon: bool = typer.Option(False, "--daemon", help="Detach; wait up to 10 s for the master to "
                                                          "attach and report; logs go to DIR/slave.log."),
    detached: bool = typer.Option(False, "--detached", hidden=True,
                                  help="Internal: this process is the --daemon child."),
    log_format: LogFormatOption = "text", log_max_bytes: LogMaxBytesOption = 0,
    log_backups: LogBackupsOption = 5, http: HttpOption = None,
) -> None:
    options = log_options(log_format, log_max_bytes, log_backups)
    check_http(http)
    config = _load(directory)
    pid = _running_pid(Path(config.basedir))
    if pid is not None:
        raise UsageError(f"a slave is already running in {config.basedir} (pid {pid}); "
                         f"stop it with: bbx slave stop {directory}")
    if daemon:
        _start_daemon(config, directory, child_args(log_format, log_max_bytes, log_backups, http))
        return
    from bbx.slave import run

    try:
        rc = run(config, console=not detached, log_options=options, http=http)
    except OSError as e:
        raise BbxError(f"cannot run the slave in {config.basedir}: {e}") from None
    raise typer.Exit(rc)


def _start_daemon(config, directory: Path, extra: list[str]) -> None:
    from bbx.slave import state as slave_state
    from bbx.slave.basedir import LOG_NAME

    log_path = Path(config.path(LOG_NAME))
    offset = log_path.stat().st_size if log_path.exists() else 0
    before = slave_state.read(config.basedir)
    child = subprocess.Popen(
        [sys.executable, "-m", "bbx", "slave", "start", "--detached", *extra, config.basedir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=config.basedir, close_fds=True)
    deadline = time.monotonic() + DAEMON_START_WAIT
    state = None
    masters = " or ".join(config.masters)
    with Waiting(f"slave {config.name} (pid {child.pid}): connecting to {masters}") as wait:
        while True:
            state = slave_state.read(config.basedir)
            fresh = state if state and state != before and state.get("pid") == child.pid else None
            if fresh and fresh.get("state") == "attached":
                break
            if fresh:
                wait.update(f"slave {config.name} (pid {child.pid}): {fresh['state']}"
                            + (f" ({fresh['reason']})" if fresh.get("reason") else ""))
            rc = child.poll()
            if rc is not None:
                raise UsageError(f"the slave exited at once (status {rc}): "
                                 f"{_hint(_log_since(log_path, offset))}")
            if time.monotonic() > deadline:
                news = (fresh or {}).get("detail") or _hint(_log_since(log_path, offset))
                raise BbxError(f"slave {config.name} started (pid {child.pid}) but has not attached "
                               f"to the master within {DAEMON_START_WAIT:.0f} s; it keeps retrying "
                               f"in the background. Last news: {news} (see {log_path})",
                               exit_code=_status_exit((fresh or {}).get("reason", "")))
            time.sleep(0.05)
    typer.echo(f"slave {config.name} started (pid {child.pid}) and attached to the master "
               f"at {state.get('master') or config.connection}")


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return ""


_HINT_MARKERS = ("unauthorized", "cannot connect", "failed", "closed", "lost", "error", "retrying")


def _hint(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if any(m in line.lower() for m in _HINT_MARKERS):
            return _strip_stamp(line)
    return _strip_stamp(lines[-1]) if lines else "nothing logged yet"


def _strip_stamp(line: str) -> str:
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ", "", line).strip()


def _check_slave_dir(directory: Path) -> Path:
    from bbx.slave.basedir import CONFIG_NAME

    directory = directory.absolute()
    if not directory.is_dir():
        raise UsageError(f"slave directory {directory} does not exist; give the DIR you created")
    if not (directory / CONFIG_NAME).exists():
        raise UsageError(f"{directory} is not a slave directory (no {CONFIG_NAME})")
    return directory


@app.command(help="Stop the slave running in DIR (SIGTERM; waits up to 15 s).")
def stop(directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory.")) -> None:
    from bbx.slave.basedir import PID_NAME

    from bbx import pidfile

    directory = _check_slave_dir(directory)
    try:
        state, pid = pidfile.stop(directory / PID_NAME, STOP_WAIT)
    except PermissionError:
        raise BbxError(f"not allowed to signal the slave in {directory}; run bbx slave stop as "
                       f"the slave's user") from None
    except pidfile.StopTimeout as e:
        raise BbxError(f"slave (pid {e.args[0]}) did not stop within {STOP_WAIT:.0f} s; "
                       f"force it with: kill -9 {e.args[0]}") from None
    if state == "stopped":
        typer.echo(f"slave stopped (pid {pid})")
    elif state == "stale":
        typer.echo(f"slave in {directory} is not running (removed a stale {PID_NAME})")
    else:
        typer.echo(f"slave in {directory} is not running")


def _status_exit(reason: str) -> int:
    """A slave that runs but is not attached: 4 when its login was refused, 6 when it refused
    the master's TLS certificate, else 3."""
    if reason == "untrusted":
        return EXIT_UNTRUSTED
    return EXIT_REFUSED if reason in ("unauthorized", "duplicate") else EXIT_UNREACHABLE


def _ago(since: float | None) -> str:
    if not since:
        return ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    return f" since {stamp} ({int(max(0, time.time() - since))} s ago)"


@app.command(help="Show whether the slave in DIR runs and whether it is attached to its master, "
                  "with the reason it last gave (from DIR/slave.state). Exit status: 0 attached; "
                  "1 not running; 3 running but not attached (refused, unreachable, timed out, "
                  "lost); 4 running but its login was refused (unauthorized, duplicate); 6 running "
                  "but it refused the master's TLS certificate.")
def status(
    directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory."),
    json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    from bbx.slave import state as slave_state

    config = _load(directory)
    pid = _running_pid(Path(config.basedir))
    state = slave_state.read(config.basedir) or {}
    if pid is None:
        code = EXIT_FAILED
    elif state.get("pid") == pid and state.get("state") == "attached":
        code = 0
    else:
        code = _status_exit(state.get("reason", "") if state.get("pid") == pid else "")
    if json:
        print_json({"name": config.name, "basedir": config.basedir, "running": pid is not None,
                    "pid": pid, "master": config.connection, "masters": list(config.masters),
                    "connection": state or None,
                    "exit": code})
        raise typer.Exit(code)
    typer.echo(f"slave {config.name} in {config.basedir}: "
               + (f"running (pid {pid})" if pid else "not running"))
    typer.echo(f"master: {' or '.join(config.masters)}")
    if state:
        current = state.get("pid") == pid
        what = state.get("state", "?") + (f": {state['reason']}" if state.get("reason") else "")
        if len(config.masters) > 1 and state.get("master"):
            what += f" (master {state['master']})"
        label = "connection" if current else "last connection state (an earlier run)"
        detail = f" ({state['detail']})" if state.get("detail") else ""
        typer.echo(f"{label}: {what}{_ago(state.get('since'))}{detail}")
    else:
        typer.echo("connection: unknown (the slave has not written DIR/slave.state yet)")
    raise typer.Exit(code)


@app.command(help="Stop the slave in DIR if it runs, then start it in the background "
                  "(as start --daemon).")
def restart(
    directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory."),
    log_format: LogFormatOption = "text", log_max_bytes: LogMaxBytesOption = 0,
    log_backups: LogBackupsOption = 5, http: HttpOption = None,
) -> None:
    stop(directory)
    start(directory, daemon=True, detached=False, log_format=log_format,
          log_max_bytes=log_max_bytes, log_backups=log_backups, http=http)


# bbx slave pause | drain | resume NAME: operator commands on a running master's slaves.
from . import farm as _farm  # noqa: E402  (light: typer and the client's options only)

_farm.register(app)
