"""bbx slave — create, start, stop and inspect a slave.

`bbx slave stop` on a slave that is not running prints "not running" and exits 0, as
`buildbot-worker stop` does, so scripts can call it unconditionally.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import BbxError, UsageError

app = typer.Typer(help="Create, start, stop and inspect a slave.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

# `start --daemon` reports success once the log says this, like buildbot-worker (PROTOCOL.md §8).
ATTACHED_LINE = "message from master: attached"
DAEMON_START_WAIT = 10.0  # buildbot-worker start's wait (PROTOCOL.md §8)
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
    keepalive: int = typer.Option(600, "--keepalive", help="Seconds between keepalives to the master (0 = off)."),
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
                                redact=globs, commands=allowed, cgroup=cgroup,
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
                  "DIR/slave.log) or with --daemon in the background.")
def start(
    directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory."),
    daemon: bool = typer.Option(False, "--daemon", help="Detach; wait up to 10 s for the master to "
                                                          "attach and report; logs go to DIR/slave.log."),
    detached: bool = typer.Option(False, "--detached", hidden=True,
                                  help="Internal: this process is the --daemon child."),
) -> None:
    config = _load(directory)
    pid = _running_pid(Path(config.basedir))
    if pid is not None:
        raise BbxError(f"a slave is already running in {config.basedir} (pid {pid}); "
                       f"stop it with: bbx slave stop {directory}")
    if daemon:
        _start_daemon(config, directory)
        return
    from bbx.slave import run

    try:
        rc = run(config, console=not detached)
    except OSError as e:
        raise BbxError(f"cannot run the slave in {config.basedir}: {e}") from None
    raise typer.Exit(rc)


def _start_daemon(config, directory: Path) -> None:
    from bbx.slave.basedir import LOG_NAME

    log_path = Path(config.path(LOG_NAME))
    offset = log_path.stat().st_size if log_path.exists() else 0
    child = subprocess.Popen(
        [sys.executable, "-m", "bbx", "slave", "start", "--detached", config.basedir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=config.basedir, close_fds=True)
    deadline = time.monotonic() + DAEMON_START_WAIT
    fresh = ""
    while True:
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                fresh = f.read()
        except FileNotFoundError:
            fresh = ""
        if ATTACHED_LINE in fresh:
            typer.echo(f"slave {config.name} started (pid {child.pid}) and attached to the master "
                       f"at {' or '.join(config.masters)}")
            return
        rc = child.poll()
        if rc is not None:
            raise BbxError(f"the slave exited at once (status {rc}): {_hint(fresh)}")
        if time.monotonic() > deadline:
            raise BbxError(f"slave {config.name} started (pid {child.pid}) but has not attached to "
                           f"the master within {DAEMON_START_WAIT:.0f} s; it keeps retrying in the "
                           f"background. Last news: {_hint(fresh)} (see {log_path})")
        time.sleep(0.05)


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


# Log lines that tell the connection's state, newest wins; (marker, state shown).
_STATE_MARKERS = (
    (ATTACHED_LINE, "attached"),
    ("attached to the master", "attached"),
    ("unauthorized", "refused: wrong name or password"),
    ("refused the master at", "refused the master's TLS certificate"),
    ("cannot connect to", "cannot connect"),
    ("login to", "login failed"),
    ("lost the connection", "disconnected"),
    ("sent nothing for", "disconnected (master silent)"),
    ("closed during login", "disconnected during login"),
    ("connected to", "connected, logging in"),
    ("slave stopped", "stopped"),
)


def last_connection_state(log_text: str) -> tuple[str, str] | None:
    """(state, log line) from the newest log line that tells the connection's state."""
    for line in reversed(log_text.splitlines()):
        for marker, state in _STATE_MARKERS:
            if marker in line:
                return state, line.strip()
    return None


@app.command(help="Show whether the slave in DIR runs, its master and its last connection state. "
                  "Exit status 0 if running, 1 if not.")
def status(directory: Path = typer.Argument(..., metavar="DIR", help="The slave directory.")) -> None:
    from bbx.slave.basedir import LOG_NAME

    config = _load(directory)
    pid = _running_pid(Path(config.basedir))
    typer.echo(f"slave {config.name} in {config.basedir}: "
               + (f"running (pid {pid})" if pid else "not running"))
    typer.echo(f"master: {' or '.join(config.masters)}")
    try:
        text = Path(config.path(LOG_NAME)).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found = last_connection_state(text)
    if found:
        state, line = found
        typer.echo(f"last connection state: {state} ({line})")
    else:
        typer.echo("last connection state: unknown (nothing in the log yet)")
    raise typer.Exit(0 if pid else 1)
