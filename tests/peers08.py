"""The real Buildbot 0.8.14 peers, for the interop tests: installed once, cached, run as children.

    from tests.peers08 import install_slave08, BuildSlave08, install_master08, BuildMaster08

Both peers run under Python 2.7 (`BBX_PY2`, else pyenv's 2.7.18, else `python2.7` on PATH),
each from its own `pip --target` directory, cached by tests/cache.py (`cached_dir`, under
`$BBX_TEST_CACHE`, default ~/.cache/bbx-tests; `$BBX_PEERS08_CACHE` overrides the root for
these two). The first test run on a machine installs them from the package index (a minute or
so); later runs reuse the directories. Parallel pytest-xdist workers install once: the others
wait on the cache's lock (with its deadline), then reuse. Where no Python 2.7 exists, `install_*` skip the test and
say why.

2014-era packages need three fixes on a 2026 machine, applied at install time:
  1. zope.interface's namespace `.pth` is not read from a --target directory, so the `zope`
     package gets an empty `__init__.py`;
  2. 0.8's schema migrations rely on SQLite's pre-3.26 ALTER TABLE RENAME behaviour: a
     `sitecustomize.py` in the master's directory turns on `legacy_alter_table` for every
     connection;
  3. `buildbot upgrade-master` runs after `create-master` (BuildMaster08.start does it).

`BuildSlave08` creates (`buildslave create-slave`) and runs a real buildslave against a bbx
master; `BuildMaster08` writes a master.cfg, creates, upgrades and runs a real buildmaster for a
bbx slave, starts builds with `buildbot sendchange` and reads their results from state.sqlite
and their step logs from the builder's directory.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `python tests/peers08.py`

from tests import cache  # noqa: E402
from tests.support import Proc, wait_until  # noqa: E402

# What pip 19 under Python 2.7 must be pinned to, or it picks releases that are Python 3 only:
# Twisted 20.3 is the last for Python 2, Automat and Tempita moved on after these.
TWISTED_PINS = ("twisted==20.3.0", "Automat==20.2.0")
SLAVE_PINS = ("buildbot-slave==0.8.14.post1", *TWISTED_PINS)
MASTER_PINS = ("buildbot==0.8.14", *TWISTED_PINS, "Tempita==0.5.2", "future==0.18.3")
# Bump when the install fixes change, so cached directories are rebuilt.
LAYOUT_VERSION = 1
# A cold install downloads and unpacks a few dozen packages; give pip plenty of room.
PIP_TIMEOUT = 900
# `buildslave create-slave` / `buildbot create-master` / `upgrade-master` run in a few seconds.
SCRIPT_TIMEOUT = 120

_SITECUSTOMIZE = '''\
# Written by tests/peers08.py (fix 2): Buildbot 0.8's schema migrations rename tables the way
# SQLite did before 3.26; ask every connection for that behaviour.
import sqlite3
import sqlite3.dbapi2 as _dbapi2

_connect = _dbapi2.connect


def _legacy_connect(*args, **kwargs):
    connection = _connect(*args, **kwargs)
    connection.execute("PRAGMA legacy_alter_table=ON")
    return connection


_dbapi2.connect = sqlite3.connect = _legacy_connect
'''


def python2() -> str | None:
    """A Python 2.7 interpreter, or None when this machine has none."""
    candidates = [os.environ.get("BBX_PY2")]
    try:
        prefix = subprocess.run(["pyenv", "prefix", "2.7.18"], capture_output=True, text=True,
                                timeout=30)
        if prefix.returncode == 0:
            candidates.append(str(Path(prefix.stdout.strip()) / "bin" / "python"))
    except (OSError, subprocess.TimeoutExpired):
        pass
    candidates.append(shutil.which("python2.7"))
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.stdout.strip() == "(2, 7)":
            return candidate
    return None


def cache_root() -> Path:
    """Where the 0.8 peers are cached: $BBX_PEERS08_CACHE, else tests/cache.py's root."""
    override = os.environ.get("BBX_PEERS08_CACHE")
    if override:
        root = Path(override).expanduser()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root
    return cache.cache_root()


@dataclass(frozen=True)
class Install08:
    """One installed 0.8 peer: the interpreter and the --target directory it runs from."""

    python: str
    path: Path
    seconds: float  # how long install() took (0-ish when the cache was warm)

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path), "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1"}

    def script_argv(self, module: str, name: str, *args) -> list[str]:
        """argv running a console script's `run()` (buildslave, buildbot, twistd) from here."""
        code = f"import sys; from {module} import run; sys.argv[0] = {name!r}; run()"
        return [self.python, "-c", code, *[str(a) for a in args]]

    def run_script(self, module: str, name: str, *args, cwd=None,
                   timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess:
        out = subprocess.run(self.script_argv(module, name, *args), cwd=cwd,
                             env={**os.environ, **self.env()}, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({out.returncode}):\n"
                                 f"{out.stdout[-3000:]}{out.stderr[-3000:]}")
        return out

    def twistd(self, basedir: Path, log_path: Path, *, env=None) -> Proc:
        """Run basedir/buildbot.tac in the foreground, as `twistd --nodaemon`, from basedir."""
        argv = self.script_argv("twisted.scripts.twistd", "twistd", "--nodaemon", "--no_save",
                                "--pidfile=", "-y", "buildbot.tac")
        return Proc(argv, cwd=basedir, env={**self.env(), **(env or {})}, log_path=log_path)


def cache_key(kind: str, pins) -> str:
    """The cache directory's name: the pins and the install fixes are part of it, so changing
    either installs afresh beside the old directory instead of trusting it."""
    digest = hashlib.sha256(json.dumps({"layout": LAYOUT_VERSION, "pins": list(pins)})
                            .encode()).hexdigest()[:12]
    return f"buildbot08-{kind}-{digest}"


def _install(kind: str, pins) -> Install08:
    python = python2()
    if python is None:
        pytest.skip("the Buildbot 0.8.14 interop tests need Python 2.7 (set BBX_PY2 to one, "
                    "or install it with `pyenv install 2.7.18`)")
    started = time.monotonic()

    def build(target: Path) -> None:
        argv = [python, "-m", "pip", "install", "-q", "--no-warn-script-location",
                "--target", str(target), *pins]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                             stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise AssertionError(f"installing the Buildbot 0.8.14 {kind} failed "
                                 f"({out.returncode}): {' '.join(argv)}\n{out.stderr[-4000:]}")
        (target / "zope" / "__init__.py").touch()  # fix 1
        if kind == "master":
            (target / "sitecustomize.py").write_text(_SITECUSTOMIZE)  # fix 2

    # tests/cache.py: one install per machine, parallel workers wait (with a deadline) for it,
    # and a half-finished install is never reused.
    path = cache.cached_dir(cache_key(kind, pins), build, root=cache_root())
    return Install08(python, path, time.monotonic() - started)


def install_slave08() -> Install08:
    """The real buildbot-slave 0.8.14 (installing it the first time); skips without Python 2.7."""
    return _install("slave", SLAVE_PINS)


def install_master08() -> Install08:
    """The real buildbot 0.8.14 master (installing it the first time); skips without Python 2.7."""
    return _install("master", MASTER_PINS)


@pytest.fixture(scope="session")
def slave08_install() -> Install08:
    return install_slave08()


@pytest.fixture(scope="session")
def master08_install() -> Install08:
    return install_master08()


# -- a real buildslave 0.8.14 --------------------------------------------------------------------

class BuildSlave08:
    """A real buildslave 0.8.14 basedir (create-slave) and, once started, its twistd child.

    `allow_shutdown` is None, "file" (touch basedir/shutdown.stamp) or "signal" (SIGHUP), as
    create-slave's --allow-shutdown; `usepty` is its --usepty, what the slave does when a
    master leaves the choice to it (usePTY="slave-config"). Stopped with SIGTERM on `stop()`.
    """

    def __init__(self, install: Install08, basedir: Path, master: str, name: str, password: str,
                 *, allow_shutdown: str | None = None, keepalive: int = 600, maxdelay: int = 2,
                 usepty: bool = False):
        self.install = install
        self.basedir = Path(basedir)
        self.name = name
        args = ["create-slave", "-q", f"--keepalive={keepalive}", f"--maxdelay={maxdelay}",
                f"--usepty={int(usepty)}"]
        if allow_shutdown:
            args.append(f"--allow-shutdown={allow_shutdown}")
        install.run_script("buildslave.scripts.runner", "buildslave", *args, self.basedir,
                           master, name, password)
        self.proc: Proc | None = None

    @property
    def log_path(self) -> Path:
        return self.basedir / "twistd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "BuildSlave08":
        self.proc = self.install.twistd(self.basedir, self.basedir.parent / f"{self.basedir.name}.out")
        return self

    def wait_log(self, text: str, timeout: float = 30.0, *, count: int = 1) -> None:
        def seen():
            if self.log().count(text) >= count:
                return True
            if self.proc is not None and self.proc.popen.poll() is not None:
                raise AssertionError(f"buildslave {self.name} exited {self.proc.popen.returncode} "
                                     f"before logging {text!r}:\n{self.log()[-3000:]}")
            return False
        wait_until(seen, timeout, what=f"{text!r} in {self.name}'s twistd.log")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


# -- a real buildmaster 0.8.14 -------------------------------------------------------------------

# Result codes as 0.8's buildbot.status.results numbers them.
RESULT_NAMES = ["SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED"]
CHANGE_USER = "change"
CHANGE_PASS = "changepw"

# Twisted's Factory logs "<factory class> starting on <port>" once the PB port is bound.
_PORT_LINE = re.compile(r"PBServerFactory starting on (\d+)")
# 0.8 log files are netstrings "<len>:<channel><text>," with channel 0 stdout, 1 stderr, 2 header.
CHANNELS = {0: "stdout", 1: "stderr", 2: "header"}

MASTER_CFG = r'''# -*- python -*-
# Written by tests/peers08.py: a real Buildbot 0.8.14 master for bbx interop tests.
import json
import os

from buildbot.buildslave import BuildSlave
from buildbot.changes.pb import PBChangeSource
from buildbot.config import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.schedulers.basic import SingleBranchScheduler
from buildbot.steps.shell import ShellCommand
from buildbot.steps.transfer import DirectoryUpload, FileDownload, FileUpload

_here = os.path.dirname(os.path.abspath(__file__))
H = json.load(open(os.path.join(_here, 'harness.json')))

c = BuildmasterConfig = {}
c['title'] = 'bbx-interop08'
c['buildbotURL'] = 'http://127.0.0.1/'
c['slaves'] = [BuildSlave(str(H['slave']), str(H['password']))]
c['protocols'] = {'pb': {'port': 'tcp:0:interface=127.0.0.1'}}
c['change_source'] = [PBChangeSource(user=str(H['change_user']), passwd=str(H['change_pass']))]
c['db'] = {'db_url': 'sqlite:///state.sqlite'}
c['mergeRequests'] = False
c['logCompressionLimit'] = 1000000000  # plain log files the tests can read
c['status'] = []

sh = lambda script: ['sh', '-c', script]  # noqa: E731

f_shell = BuildFactory()
f_shell.addStep(ShellCommand(name='both', command=sh('echo to-stdout; echo to-stderr >&2')))

f_fail = BuildFactory()
f_fail.addStep(ShellCommand(name='exit3', command=sh('echo failing >&2; exit 3')))

f_files = BuildFactory()
f_files.addStep(FileDownload(mastersrc=os.path.join(_here, 'payload.bin'), slavedest='got.bin'))
f_files.addStep(ShellCommand(name='sum', command=sh('sha256sum got.bin')))
f_files.addStep(FileUpload(slavesrc='got.bin', masterdest=os.path.join(_here, 'uploaded.bin')))
f_files.addStep(ShellCommand(name='make-dir',
                             command=sh('mkdir -p d/sub && echo dir-ok > d/sub/b.txt')))
f_files.addStep(DirectoryUpload(slavesrc='d', masterdest=os.path.join(_here, 'uploaded-dir')))

BUILDERS = [('b-shell', f_shell), ('b-fail', f_fail), ('b-files', f_files)]
c['builders'] = [BuilderConfig(name=n, slavenames=[str(H['slave'])], factory=f)
                 for n, f in BUILDERS]
# One scheduler per builder, picked by the change's category (`sendchange --category`).
c['schedulers'] = [SingleBranchScheduler(name='on-' + n, branch=None, treeStableTimer=None,
                                         categories=[n], builderNames=[n])
                   for n, _ in BUILDERS]
'''

BUILDERS08 = ("b-shell", "b-fail", "b-files")

# sendchange's revision -> the build request it made (0.8.14 schema: sourcestamps belong to a
# sourcestamp set, which a buildset points at).
_REQUEST_QUERY = """
SELECT br.id, br.complete, br.results, b.number
FROM sourcestamps ss
JOIN buildsets bs ON bs.sourcestampsetid = ss.sourcestampsetid
JOIN buildrequests br ON br.buildsetid = bs.id
LEFT JOIN builds b ON b.brid = br.id
WHERE ss.revision = ?
ORDER BY b.id DESC
"""


class BuildMaster08:
    """A real buildmaster 0.8.14 in `basedir` for one slave; `.port` once `start()`ed.

    Builders: b-shell (stdout and stderr; SUCCESS), b-fail (exit 3; FAILURE), b-files
    (FileDownload of payload.bin, sha256sum, FileUpload to uploaded.bin, DirectoryUpload of
    d/ to uploaded-dir/). `payload` is what payload.bin holds.
    """

    def __init__(self, install: Install08, basedir: Path, *, slave: str, password: str,
                 payload: bytes = b""):
        self.install = install
        self.basedir = Path(basedir)
        self.slave = slave
        self.password = password
        self.payload = payload
        self.port: int | None = None
        self.proc: Proc | None = None

    def _buildbot(self, *args, timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess:
        return self.install.run_script("buildbot.scripts.runner", "buildbot", *args,
                                       timeout=timeout)

    def start(self, timeout: float = 60.0) -> "BuildMaster08":
        self.basedir.mkdir(parents=True, exist_ok=True)
        self._buildbot("create-master", "-q", self.basedir)
        (self.basedir / "master.cfg").write_text(MASTER_CFG)
        (self.basedir / "harness.json").write_text(json.dumps(dict(
            slave=self.slave, password=self.password, change_user=CHANGE_USER,
            change_pass=CHANGE_PASS)))
        (self.basedir / "payload.bin").write_bytes(self.payload)
        self._buildbot("upgrade-master", "-q", self.basedir)  # fix 3
        self.proc = self.install.twistd(self.basedir, self.basedir.parent / f"{self.basedir.name}.out")
        try:
            def port_line():
                if self.proc.popen.poll() is not None:
                    raise AssertionError(f"buildmaster 0.8.14 exited {self.proc.popen.returncode}:\n"
                                         f"{self.log()[-3000:]}{self.proc.output()[-2000:]}")
                return _PORT_LINE.search(self.log())
            self.port = int(wait_until(port_line, timeout, what="the 0.8 master's port").group(1))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return (self.basedir / "twistd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0, *, count: int = 1) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout,
                   what=f"{text!r} in the 0.8 master's twistd.log")

    def send_change(self, builder: str) -> str:
        """`buildbot sendchange` for one build of `builder`; returns the change's revision."""
        rev = "bbx-" + uuid.uuid4().hex
        self._buildbot("sendchange", "--master", self.address, "--auth",
                       f"{CHANGE_USER}:{CHANGE_PASS}", "--who", "bbx-tests", "--category",
                       builder, "--revision", rev, "--comments", "bbx interop", "bbx.txt")
        return rev

    def request(self, rev: str) -> dict | None:
        """The build request of change `rev`: {"complete", "result", "number"}, or None yet."""
        try:
            con = sqlite3.connect(f"file:{self.basedir / 'state.sqlite'}?mode=ro", uri=True,
                                  timeout=5)
            try:
                rows = con.execute(_REQUEST_QUERY, (rev,)).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:
            return None
        if not rows:
            return None
        _, complete, result, number = rows[0]
        name = None
        if complete:
            name = RESULT_NAMES[result] if 0 <= result < len(RESULT_NAMES) else str(result)
        return {"complete": bool(complete), "result": name, "number": number}

    def build(self, builder: str, timeout: float = 90.0) -> dict:
        """Run one build of `builder` and wait for it; returns its request (result, number)."""
        rev = self.send_change(builder)

        def done():
            found = self.request(rev)
            return found if found and found["complete"] else None
        return wait_until(done, timeout, interval=0.05, what=f"the 0.8 build on {builder}")

    def step_log(self, builder: str, number: int, step: str) -> dict[str, str]:
        """The stdio log of one step: {"stdout": ..., "stderr": ..., "header": ...}."""
        candidates = sorted((self.basedir / builder).glob(f"{number}-log-{step}-stdio*"))
        assert candidates, f"no stdio log for step {step} of {builder} #{number}"
        raw = candidates[0].read_bytes()
        if candidates[0].suffix == ".bz2":
            raw = bz2.decompress(raw)
        out = {name: "" for name in CHANNELS.values()}
        pos = 0
        while pos < len(raw):
            colon = raw.index(b":", pos)
            size = int(raw[pos:colon])
            body = raw[colon + 1:colon + 1 + size]
            pos = colon + 1 + size + 1  # the trailing ","
            channel = CHANNELS.get(body[0] - ord("0"))
            if channel:
                out[channel] += body[1:].decode("utf-8", "replace")
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


if __name__ == "__main__":  # `python tests/peers08.py`: install both and say where and how long
    for peer in (install_slave08(), install_master08()):
        print(f"{peer.path} ({peer.seconds:.1f} s)")
