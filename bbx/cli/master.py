"""bbx master — create, check, start and stop a master.

`bbx master stop` on a master that is not running prints "not running" and exits 0, as
`buildbot stop` does: stopping is idempotent, so scripts can call it unconditionally.
"""

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import BbxError, UsageError
from .roleopts import (HttpOption, LogBackupsOption, LogFormatOption, LogMaxBytesOption, Waiting,
                       check_http, child_args, log_options)

app = typer.Typer(help="Create, start and stop a master.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

# How long `stop` waits for the master to exit after SIGTERM.
STOP_TIMEOUT = 15.0
# How long `reconfig` waits for the master's outcome: a reconfig waits for each attached slave's
# setBuilderList answer, whose deadline is 20 s (bbx/master/link.py ATTACH_CALL_TIMEOUT).
RECONFIG_TIMEOUT = 60.0
# How long `start --daemon` waits for the master to write master.endpoint.
DAEMON_START_TIMEOUT = 30.0


def _load(directory: Path):
    from bbx.master.config import ConfigError, load_config

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; create a master with "
                         f"`bbx master create {directory}`")
    try:
        return load_config(directory)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _parse_slave(text: str):
    from bbx.master.config import SlaveConfig

    name, sep, password = text.partition(":")
    if not sep or not name.strip() or not password:
        raise UsageError(f"--slave {text!r} is not NAME:PASSWORD; write e.g. --slave local:s3cret")
    return SlaveConfig(name.strip(), password)


def _parse_builder(text: str):
    """NAME=ITEM[,ITEM...], each item a slave's name or tag:TAG; (name, names, tags)."""
    name, sep, items = text.partition("=")
    words = [s.strip() for s in items.split(",") if s.strip()]
    names = [w for w in words if not w.startswith("tag:")]
    if not sep or not name.strip() or not words or "tag:" in words:
        raise UsageError(f"--builder {text!r} is not NAME=SLAVE[,SLAVE...] (or tag:TAG items); "
                         f"write e.g. --builder linux=local or --builder test=tag:linux")
    tags = _tags(f"--builder {text!r}", [w[len("tag:"):] for w in words if w.startswith("tag:")])
    return name.strip(), names, tags


def _parse_slave_tags(text: str):
    name, sep, items = text.partition("=")
    tags = [t.strip() for t in items.split(",") if t.strip()]
    if not sep or not name.strip() or not tags:
        raise UsageError(f"--slave-tags {text!r} is not NAME=TAG[,TAG...]; "
                         f"write e.g. --slave-tags local=linux,x86_64")
    return name.strip(), _tags(f"--slave-tags {text!r}", tags)


def _tags(where: str, tags: list[str]) -> tuple[str, ...]:
    from bbx.pb.tags import check_tags

    try:
        return check_tags(tags)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None


@app.command()
def create(
    directory: Path = typer.Argument(..., help="The master's directory (created if missing)."),
    listen: str = typer.Option("tcp:9989:interface=127.0.0.1", "--listen",
                               help="Twisted server endpoint string to listen on."),
    slave: Optional[List[str]] = typer.Option(None, "--slave", help="NAME:PASSWORD (repeatable). "
                                              "Default: one slave 'local' with a random password."),
    slave_tags: Optional[List[str]] = typer.Option(
        None, "--slave-tags", metavar="NAME=TAG[,TAG...]",
        help="Tags of a slave given by --slave (repeatable), e.g. local=linux,x86_64."),
    builder: Optional[List[str]] = typer.Option(
        None, "--builder", help="NAME=SLAVE[,SLAVE...] (repeatable); an item tag:TAG selects "
        "the slaves with that tag (all tag: items must match), e.g. test=tag:linux,tag:docker. "
        "Default: one builder per slave."),
    tls: bool = typer.Option(False, "--tls", help="Listen with TLS: write a private key (0600) and a "
                             "self-signed certificate to DIR and print its SHA-256 fingerprint."),
    tls_name: Optional[List[str]] = typer.Option(
        None, "--tls-name", metavar="HOST", help="A host name or address slaves dial, added to the "
        "certificate (repeatable). The listen interface (and loopback names) are always in it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing master.toml."),
) -> None:
    """Write a commented DIR/master.toml (mode 0600)."""
    from bbx.master.config import (CONFIG_NAME, DEFAULT_SLAVE, BuilderConfig, ConfigError,
                                   new_password, safe_builddir, write_config)

    if tls and listen.split(":", 1)[0].lower() == "ssl":
        raise UsageError("--listen is already an ssl: string with its own certificate; drop --tls, "
                         "or give a tcp: --listen for --tls to turn into ssl:")
    _check_listen(listen)
    if tls_name and not tls:
        raise UsageError("--tls-name names hosts for the --tls certificate; add --tls")
    path = directory / CONFIG_NAME
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; use --force to overwrite it")
    slaves = [_parse_slave(s) for s in slave or []]
    if not slaves:
        from bbx.master.config import SlaveConfig

        slaves = [SlaveConfig(DEFAULT_SLAVE, new_password())]
    if slave_tags:
        import dataclasses

        by_name = {s.name: i for i, s in enumerate(slaves)}
        for text in slave_tags:
            name, tags = _parse_slave_tags(text)
            if name not in by_name:
                raise UsageError(f"--slave-tags {text!r} names slave {name!r}, which no --slave "
                                 f"gives; slaves: {', '.join(by_name)}")
            i = by_name[name]
            slaves[i] = dataclasses.replace(slaves[i], tags=tags)
    if builder:
        builders = []
        for text in builder:
            name, names, tags = _parse_builder(text)
            builders.append(BuilderConfig(name, tuple(names), safe_builddir(name), tags=tags))
    else:
        builders = [BuilderConfig(s.name, (s.name,), safe_builddir(s.name)) for s in slaves]
    certificate = _make_certificate(directory, listen, tls_name or [], force) if tls else None
    if certificate:
        listen = certificate[0]
    try:
        written = write_config(directory, listen, slaves, builders, force=force)
    except ConfigError as e:
        # The file was not written; the message names the option's value that is wrong.
        raise UsageError(str(e).replace(str(path), "the options")) from None
    except FileExistsError:
        raise UsageError(f"{path} already exists; use --force to overwrite it") from None
    except OSError as e:
        raise BbxError(f"cannot write {path}: {e.strerror}; check the directory's permissions") from None
    print(f"wrote {written} (mode 0600)")
    for s in slaves:
        print(f"  slave {s.name}: password {s.password}")
    print("control user and password: see [control] in that file")
    if certificate:
        _, key_path, cert_path, pin, names = certificate
        print(f"TLS: key {key_path} (mode 0600), self-signed certificate {cert_path} for "
              f"{', '.join(names)}")
        print(f"  certificate SHA-256 fingerprint: {pin}")
        print(f"  slaves check it with: bbx slave create DIR HOST[:PORT] NAME PASSWORD "
              f"--fingerprint {pin}")
        print(f"  (or copy {cert_path.name} to the slave and give --ca {cert_path.name})")
    print(f"next: bbx master start {directory}   (check it first: bbx master checkconfig {directory})")


def _make_certificate(directory: Path, listen: str, extra_names: list[str], force: bool):
    """Generate DIR/master.key and DIR/master.crt for `listen`; return (ssl: listen string,
    key path, certificate path, fingerprint, names)."""
    from bbx.master import tlscert
    from bbx.pb.tls import resolve_files

    try:
        names = tlscert.names_for(listen, extra_names)
        tls_listen = tlscert.tls_listen(listen)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        key_path, cert_path, pin = tlscert.generate(directory, names, force=force)
    except FileExistsError as e:
        raise UsageError(f"{e} already exists; use --force to replace the key and certificate "
                         "(slaves that pinned the old one must be told the new fingerprint)") from None
    except OSError as e:
        raise BbxError(f"cannot write the TLS key in {directory}: {e.strerror}; check the "
                       "directory's permissions") from None
    _check_listen(resolve_files(tls_listen, directory.absolute()))
    return tls_listen, key_path, cert_path, pin, names


def _check_listen(listen: str, config=None) -> None:
    """A bad endpoint string is one clear line: naming --listen, or master.toml's line."""
    import re

    from twisted.internet import reactor

    from bbx.pb.endpoints import server_endpoint

    try:
        server_endpoint(reactor, listen)
    except ValueError as e:
        if config is None:
            raise UsageError(f"{e}; write e.g. --listen tcp:9989:interface=127.0.0.1") from None
        lines = config.path.read_text().splitlines()
        number = next((i + 1 for i, ln in enumerate(lines) if re.match(r"\s*listen\s*=", ln)), None)
        at = f"{config.path}:{number}" if number else str(config.path)
        raise UsageError(f'{at}: master.listen: {e}; write e.g. listen = '
                         f'"tcp:9989:interface=127.0.0.1"') from None


# How many slaves and builders checkconfig names before it only counts the rest.
CHECKCONFIG_SLAVES = 20
CHECKCONFIG_BUILDERS = 50


@app.command()
def checkconfig(directory: Path = typer.Argument(..., help="The master's directory.")) -> None:
    """Validate DIR/master.toml and say what it configures (never the passwords)."""
    config = _load(directory)
    _check_listen(config.listen, config)
    print(f"{config.path}: valid")
    print(f"  listen: {config.listen}")
    _print_certificate(config.listen)
    print(f"  keepalive: every {config.keepalive_interval:g} s; a slave silent for "
          f"{config.keepalive_timeout:g} s is declared gone")
    from bbx.master.selection import describe, unserved

    # A farm may configure thousands of each: the first few, then how many more.
    shown = ", ".join(_slave_text(s) for s in config.slaves[:CHECKCONFIG_SLAVES]) or "none"
    if len(config.slaves) > CHECKCONFIG_SLAVES:
        shown += f" and {len(config.slaves) - CHECKCONFIG_SLAVES} more"
    print(f"  slaves ({len(config.slaves)}): {shown}")
    print(f"  builders ({len(config.builders)}):")
    for b in config.builders[:CHECKCONFIG_BUILDERS]:
        print(f"    {b.name}: slaves {describe(b)}; builddir {b.builddir}")
    if len(config.builders) > CHECKCONFIG_BUILDERS:
        print(f"    and {len(config.builders) - CHECKCONFIG_BUILDERS} more "
              f"(`bbx builders` lists them from a running master)")
    for line in unserved(config):
        print(f"  warning: {line}")
    print(f"  control users: {', '.join(u.name for u in config.control_users) or 'none'}")
    print(f"  log: {directory / config.log}")
    location = config.store_location
    if location.shared:
        print(f"  store: {location.display()} (PostgreSQL, shared); this master is "
              f"{config.master_name!r}; a silent master is declared dead within "
              f"{config.heartbeat_timeout:g} s")
    else:
        print(f"  store: {location.display()} (SQLite)")


def _slave_text(slave) -> str:
    return f"{slave.name} [{', '.join(slave.tags)}]" if slave.tags else slave.name


def _print_certificate(listen: str) -> None:
    from bbx.pb import tls

    path = tls.certificate_file(listen)
    if path is None:
        return
    try:
        about = tls.describe(tls.load_certificates(path)[0])
    except ValueError as e:
        print(f"  tls: {e}")
        return
    names = ", ".join(about["san"]) or "no host (no subjectAltName)"
    print(f"  tls: certificate {path}: {about['subject']}, for {names}")
    print(f"       expires {about['not_after']}; SHA-256 fingerprint {about['fingerprint']}")
    if not about["san"]:
        print("  warning: without a subjectAltName, slaves that check the host name (--ca, "
              "--use-tls) refuse this certificate; reissue it (bbx master create --tls) or have "
              "them pin it (--fingerprint)")
    if about["expired"]:
        print("  warning: the certificate has expired; slaves that check it (--ca, --use-tls) "
              "refuse it until it is renewed")


def _refuse_if_running(directory: Path) -> None:
    from bbx import pidfile
    from bbx.master.service import ENDPOINT_FILE, PID_FILE

    pid = pidfile.running(directory / PID_FILE)
    if pid is not None:
        raise UsageError(f"a master is already running in {directory} (pid {pid}); "
                       f"stop it with `bbx master stop {directory}`")
    for stale in (PID_FILE, ENDPOINT_FILE):
        try:
            (directory / stale).unlink()
        except FileNotFoundError:
            pass


@app.command()
def start(
    directory: Path = typer.Argument(..., help="The master's directory."),
    daemon: bool = typer.Option(False, "--daemon", help="Run in the background; logs go to DIR/master.log."),
    detached: bool = typer.Option(False, "--detached", hidden=True,
                                  help="Internal: the background child of --daemon."),
    log_format: LogFormatOption = "text", log_max_bytes: LogMaxBytesOption = 0,
    log_backups: LogBackupsOption = 5, http: HttpOption = None,
) -> None:
    """Run the master (foreground: logs to the terminal and DIR/master.log; Ctrl-C or SIGTERM
    stops it cleanly; SIGHUP reloads master.toml, as `bbx master reconfig` does)."""
    options = log_options(log_format, log_max_bytes, log_backups)
    config = _load(directory)
    _check_listen(config.listen, config)
    check_http(http if http is not None else config.http,
               "--http" if http is not None else f"{config.path}: master.http")
    directory = directory.resolve()
    _refuse_if_running(directory)
    if daemon:
        _start_daemon(directory, config, child_args(log_format, log_max_bytes, log_backups, http))
        return
    from bbx.master.service import StartFailed, run

    try:
        run(directory, config, to_terminal=not detached, log_options=options, http=http)
    except StartFailed as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(f"{e}; fix listen in {config.path}") from None


def _start_daemon(directory: Path, config, extra: list[str]) -> None:
    import os
    import subprocess

    from bbx import pidfile
    from bbx.master.service import ENDPOINT_FILE, PID_FILE, open_log

    log_path = directory / config.log
    with open_log(log_path, binary=True) as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "bbx", "master", "start", str(directory), "--detached", *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    endpoint_file = directory / ENDPOINT_FILE
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    with Waiting(f"master in {directory} (pid {child.pid}): starting"):
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise UsageError(f"the master did not start: {_last_line(log_path)}")
            if endpoint_file.exists() and pidfile.read(directory / PID_FILE) == child.pid:
                endpoint = endpoint_file.read_text().strip()
                print(f"master started in {directory} (pid {child.pid}), listening on {endpoint}")
                return
            time.sleep(0.05)
    raise BbxError(f"the master (pid {child.pid}) did not start listening within "
                   f"{DAEMON_START_TIMEOUT:g} s; see {log_path}")


@app.command()
def restart(
    directory: Path = typer.Argument(..., help="The master's directory."),
    log_format: LogFormatOption = "text", log_max_bytes: LogMaxBytesOption = 0,
    log_backups: LogBackupsOption = 5, http: HttpOption = None,
) -> None:
    """Stop the master in DIR if it runs, then start it in the background (as start --daemon)."""
    stop(directory)
    start(directory, daemon=True, detached=False, log_format=log_format,
          log_max_bytes=log_max_bytes, log_backups=log_backups, http=http)


@app.command()
def status(
    directory: Path = typer.Argument(..., help="The master's directory."),
    json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1,
                                  help="Seconds to wait for the running master to answer."),
) -> None:
    """Whether the master in DIR runs, where it listens, and what its slaves and queue look
    like. Exit status: 0 running and answering; 1 not running; 3 running but not answering."""
    from bbx import pidfile
    from bbx.master.service import ENDPOINT_FILE, PID_FILE

    from .client import ConnOptions, call
    from .errors import EXIT_FAILED, Unreachable
    from .output import print_json

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    directory = directory.resolve()
    pid = pidfile.running(directory / PID_FILE)
    try:
        endpoint = (directory / ENDPOINT_FILE).read_text().strip() if pid else None
    except OSError:
        endpoint = None
    report = {"directory": str(directory), "running": pid is not None, "pid": pid,
              "endpoint": endpoint, "slaves": None, "builders": None}
    code = 0 if pid else EXIT_FAILED
    problem = None
    if pid and endpoint:
        async def conversation(perspective, reactor):
            return {"slaves": await perspective.callRemote("slaves"),
                    "builders": await perspective.callRemote("builders")}

        try:
            answer = call(ConnOptions(master_dir=directory, timeout=timeout), conversation,
                          answer_within=timeout, what="the status calls")
            slaves = answer["slaves"]
            report["slaves"] = {"configured": len(slaves),
                                "connected": sum(1 for s in slaves if s.get("connected"))}
            report["builders"] = len(answer["builders"])
        except BbxError as e:
            code, problem = Unreachable.exit_code, e.message
    elif pid:
        code, problem = Unreachable.exit_code, "it has not written master.endpoint yet (starting?)"
    report["problem"] = problem
    if json:
        print_json(dict(report, exit=code))
        raise typer.Exit(code)
    print(f"master in {directory}: " + (f"running (pid {pid})" if pid else "not running"))
    if endpoint:
        print(f"listening on {endpoint}")
    if report["slaves"]:
        s = report["slaves"]
        print(f"slaves: {s['connected']} of {s['configured']} connected; "
              f"builders: {report['builders']}")
    if problem:
        print(f"not answering: {problem}")
    raise typer.Exit(code)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


@app.command()
def stop(directory: Path = typer.Argument(..., help="The master's directory.")) -> None:
    """Stop the master running in DIR (SIGTERM, then wait up to 15 s). Not running: says so, exit 0."""
    from bbx import pidfile
    from bbx.master.service import PID_FILE

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    try:
        state, pid = pidfile.stop(directory / PID_FILE, STOP_TIMEOUT)
    except PermissionError:
        raise BbxError(f"not allowed to signal the master in {directory}; run as its user") from None
    except pidfile.StopTimeout as e:
        raise BbxError(f"the master (pid {e.args[0]}) did not stop within {STOP_TIMEOUT:g} s; "
                       f"kill it with `kill -9 {e.args[0]}`") from None
    if state == "stopped":
        print(f"master in {directory} stopped (pid {pid})")
    else:
        stale = " (removed a stale master.pid)" if state == "stale" else ""
        print(f"master in {directory} is not running{stale}")


@app.command()
def reconfig(
    directory: Path = typer.Argument(..., help="The master's directory."),
    timeout: float = typer.Option(RECONFIG_TIMEOUT, "--timeout", min=0.1,
                                  help="Seconds to wait for the master's answer."),
) -> None:
    """Make the running master re-read DIR/master.toml and apply it without a restart (SIGHUP).

    Prints the master's outcome line: what changed, or why nothing did (a bad file). Exit 0
    when it applied; 2 for a bad file; 1 when no master runs in DIR; 3 when it did not answer.
    """
    from . import reconfig as implementation

    implementation.reconfig(directory, timeout)


@app.command("migrate-store")
def migrate_store(
    directory: Path = typer.Argument(..., help="The master's directory (its SQLite history is copied)."),
    to: str = typer.Option(..., "--to", metavar="URL",
                           help="The PostgreSQL store to copy into: postgresql://user@host/dbname "
                                "(an empty database)."),
) -> None:
    """Copy this master's SQLite history into an empty PostgreSQL database, every byte.

    The master must be stopped. Then set `db = URL` in master.toml (and give the other
    masters the same db) and start it again.
    """
    from bbx import pidfile
    from bbx.master import store_location
    from bbx.master.service import PID_FILE
    from bbx.master.store import StoreError

    config = _load(directory)
    pid = pidfile.running(directory / PID_FILE)
    if pid is not None:
        raise BbxError(f"the master in {directory} is running (pid {pid}); stop it first "
                       f"(`bbx master stop {directory}`) so its history holds still")
    source = config.store_location
    if source.shared:
        raise UsageError(f"{config.path}: db is already PostgreSQL ({source.display()}); "
                         "migrate-store copies a SQLite history")
    try:
        target = store_location.parse(to)
    except ValueError as e:
        raise UsageError(f"--to {e}") from None
    if not target.shared:
        raise UsageError(f"--to {to!r} is not a PostgreSQL URL; write e.g. "
                         "--to postgresql://bbx@db.example.org/bbx")
    from bbx import startup
    from bbx.master.migrate import migrate

    startup.resume()  # a long copy: the collector runs while it does
    print(f"copying {source.path} into {target.display()} ...")
    started = time.monotonic()
    try:
        report = migrate(source.path, target.url, config.master_name)
    except StoreError as e:
        raise BbxError(str(e)) from None
    seconds = time.monotonic() - started
    counts = ", ".join(f"{n} {table}" for table, n in report.rows.items()
                       if table in ("requests", "builds", "steps", "logs"))
    print(f"copied {counts} in {seconds:.1f} s; {report.log_bytes} bytes of log, identical on "
          f"both sides (sha256 {report.digest[:16]}...)")
    print(f'next: set db = "{target.display()}" in {config.path}, then bbx master start '
          f"{directory}")
