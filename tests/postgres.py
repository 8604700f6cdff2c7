"""A real PostgreSQL server for the tests: initdb into a temporary directory, a unix socket only.

    server = PostgresServer.start()      # or the `pg_server` fixture (tests/conftest.py)
    url = server.new_database()          # postgresql://bbx@/bbx_3?host=/tmp/bbx-pg-.../sock
    server.stop()

PostgreSQL refuses to run as root, and the tests run as root here: the data and socket
directories are given to the `postgres` system user (Debian's package creates it) and initdb /
pg_ctl run through `runuser -u postgres --`. As any other user they run directly.

One initdb'd template per machine user and server version is cached under the temp directory
(guarded by a file lock, so pytest-xdist workers share it safely); each server copies it. Every
server has its own directory, socket and port, so several can run at once.

Where no server binaries are found, `find_bindir()` returns None and the fixture skips with the
reason (BBX_PG_BINDIR names a bin directory explicitly).
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# The role the server is created with (initdb -U); trust authentication on the socket only.
ROLE = "bbx"
# Test servers trade durability for speed: they live for one test session. The benchmark
# (bench/) passes durable=True to keep PostgreSQL's defaults.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# Settings every server gets: no TCP at all, room for several masters' connections.
BASE_SETTINGS = {"listen_addresses": "''", "max_connections": "200",
                 "shared_buffers": "128MB", "max_wal_size": "2GB"}
# pg_ctl -w waits up to this long for the server to accept connections.
START_TIMEOUT = 60
SERVER_USER = "postgres"
_db_numbers = itertools.count(1)


def find_bindir() -> str | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    explicit = os.environ.get("BBX_PG_BINDIR")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if directory and all(os.access(os.path.join(directory, b), os.X_OK)
                             for b in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if find_bindir() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; install "
                "Debian's postgresql-15 or set BBX_PG_BINDIR")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'bbx[postgres]'"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else argv


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files + dirs:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n"
                           f"{done.stderr}")
    return done


def _template(bindir: str) -> Path:
    """An initdb'd data directory to copy, made once per user and server version."""
    text = _run([os.path.join(bindir, "pg_ctl"), "--version"]).stdout
    version = re.search(r"\d+(\.\d+)*", text).group(0)
    base = Path(tempfile.gettempdir()) / f"bbx-pg-template-{os.geteuid()}-{version}"
    lock_path = str(base) + ".lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / "PG_VERSION").exists():
            return base
        shutil.rmtree(base, ignore_errors=True)
        making = Path(tempfile.mkdtemp(prefix="bbx-pg-initdb-"))
        data = making / "data"
        data.mkdir(mode=0o700)
        _give_to_server_user(making)
        _run(_as_server_user([os.path.join(bindir, "initdb"), "-A", "trust", "-U", ROLE,
                              "-E", "UTF8", "--locale=C", "-D", str(data)]))
        os.rename(data, base)
        shutil.rmtree(making, ignore_errors=True)
        return base


class PostgresServer:
    """One running PostgreSQL server in its own temporary directory, reachable only on a unix
    socket there. `url(db)` gives a libpq URL; `new_database()` a fresh database for one test."""

    def __init__(self, root: Path, bindir: str, port: int):
        self.root = root
        self.bindir = bindir
        self.port = port
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log = root / "server.log"

    @classmethod
    def start(cls, *, durable: bool = False, settings: dict | None = None) -> "PostgresServer":
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(missing_reason())
        template = _template(bindir)
        root = Path(tempfile.mkdtemp(prefix="bbx-pg-"))
        os.chmod(root, 0o711)
        shutil.copytree(template, root / "data", symlinks=True)
        os.chmod(root / "data", 0o700)
        (root / "sock").mkdir()
        _give_to_server_user(root)
        conf = dict(BASE_SETTINGS)
        if not durable:
            conf.update(FAST_SETTINGS)
        conf.update(settings or {})
        with open(root / "data" / "postgresql.auto.conf", "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        # The port only names the socket file (no TCP), but it also keys System V shared
        # memory: pick one at random and try another if a server already has it.
        last_error = None
        for _attempt in range(5):
            server = cls(root, bindir, random.randrange(20000, 60000))
            try:
                server._pg_ctl_start()
                return server
            except RuntimeError as e:
                last_error = e
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start a PostgreSQL server: {last_error}")

    def _pg_ctl_start(self) -> None:
        options = f"-k {self.socket_dir} -p {self.port}"
        _run(_as_server_user([os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data),
                              "-l", str(self.log), "-o", options, "-w", "-t",
                              str(START_TIMEOUT), "start"]))
        if os.geteuid() == 0:
            # The log belongs to postgres; let the tests read it.
            os.chmod(self.log, 0o644)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{ROLE}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def connect(self, dbname: str = "postgres", **kwargs):
        import psycopg

        return psycopg.connect(self.url(dbname), **kwargs)

    def new_database(self, prefix: str = "bbx") -> str:
        """Create an empty database; return its URL."""
        name = f"{prefix}_{os.getpid()}_{next(_db_numbers)}"
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        try:
            subprocess.run(_as_server_user([os.path.join(self.bindir, "pg_ctl"), "-D",
                                            str(self.data), "-m", "fast", "-w", "-t", "30",
                                            "stop"]),
                           capture_output=True, timeout=60)
        finally:
            deadline = time.monotonic() + 10
            while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(self.root, ignore_errors=True)
