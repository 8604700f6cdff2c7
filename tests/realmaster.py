"""A real Buildbot 4.3 master in a temporary directory, for interop tests.

    from tests.realmaster import RealMaster
    master = RealMaster.start(tmp_path / "m", worker="w1", password="pw")
    ...
    master.trigger("b1")            # -> "SUCCESS"
    master.stop()

or use the `real_master` pytest fixture (function scope, always stopped) that this module
exports; import it into a test module with `from tests.realmaster import real_master`.

The master listens on tcp:0:interface=127.0.0.1; the bound port is read back from
twistd.log, where Twisted logs "<Factory> starting on <port>". Builders:

  b1       three ShellCommands (one writes stderr)               -> SUCCESS
  b-fail   a ShellCommand that exits 3                           -> FAILURE
  b-true   a single `true`                                       -> SUCCESS
  b-files  FileDownload, a check, FileUpload, DirectoryUpload    -> SUCCESS; the master dir then
           holds uploaded.json (== harness.json) and uploaded-dir/sub/b.txt ("dir-ok")
  b-slow   writes its pid to <master dir>/slow.pid, then `exec sleep 60`

Builds are triggered with `buildbot sendchange` (branch = builder name) through a
PBChangeSource on the same port, then followed in state.sqlite until the request completes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support import wait_until

BIN = Path(sys.executable).parent
BUILDBOT = str(BIN / "buildbot")

RESULT_NAMES = ["SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED"]

CHANGE_USER = "change"
CHANGE_PASS = "changepw"

MASTER_CFG = r'''# -*- python -*-
# Written by tests/realmaster.py: a real Buildbot 4.3 master for bbx interop tests.
import json
import os

from buildbot.plugins import changes, schedulers, steps, util, worker

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, 'harness.json')) as f:
    H = json.load(f)

c = BuildmasterConfig = {}
c['buildbotNetUsageData'] = None
c['title'] = 'bbx-interop'
c['buildbotURL'] = 'http://127.0.0.1/'
c['workers'] = [worker.Worker(H['worker'], H['password'])]
c['protocols'] = {'pb': {'port': 'tcp:0:interface=127.0.0.1'}}
c['change_source'] = [changes.PBChangeSource(user=H['change_user'], passwd=H['change_pass'])]
c['db'] = {'db_url': 'sqlite:///state.sqlite'}
c['collapseRequests'] = False

sh = lambda script: ['sh', '-c', script]  # noqa: E731

f_b1 = util.BuildFactory()
f_b1.addStep(steps.ShellCommand(name='hello', command=['echo', 'hello']))
f_b1.addStep(steps.ShellCommand(name='stderr', command=sh('echo to-stderr >&2; echo to-stdout')))
f_b1.addStep(steps.ShellCommand(name='pwd', command=sh('pwd')))

f_fail = util.BuildFactory()
f_fail.addStep(steps.ShellCommand(name='ok-first', command=['echo', 'before failure']))
f_fail.addStep(steps.ShellCommand(name='exit3', command=sh('echo failing >&2; exit 3')))

f_true = util.BuildFactory()
f_true.addStep(steps.ShellCommand(name='true', command=['true']))

f_files = util.BuildFactory()
f_files.addStep(steps.FileDownload(mastersrc=os.path.join(_here, 'harness.json'),
                                   workerdest='got.json'))
f_files.addStep(steps.ShellCommand(name='check-download',
                                   command=sh('test -s got.json && grep -q worker got.json')))
f_files.addStep(steps.FileUpload(workersrc='got.json',
                                 masterdest=os.path.join(_here, 'uploaded.json')))
f_files.addStep(steps.ShellCommand(name='make-dir',
                                   command=sh('mkdir -p d/sub && echo dir-ok > d/sub/b.txt')))
f_files.addStep(steps.DirectoryUpload(workersrc='d',
                                      masterdest=os.path.join(_here, 'uploaded-dir')))

# b-slow: records its shell's pid in the master dir, then sleeps; for interrupt/kill tests.
f_slow = util.BuildFactory()
f_slow.addStep(steps.ShellCommand(name='slow', command=sh(
    'echo $$ > ' + os.path.join(_here, 'slow.pid') + '; exec sleep 60')))

BUILDERS = [('b1', f_b1), ('b-fail', f_fail), ('b-true', f_true), ('b-files', f_files),
            ('b-slow', f_slow)]
c['builders'] = [util.BuilderConfig(name=n, workernames=[H['worker']], factory=fac)
                 for n, fac in BUILDERS]
c['schedulers'] = [
    schedulers.SingleBranchScheduler(name=f'on-{n}', change_filter=util.ChangeFilter(branch=n),
                                     treeStableTimer=None, builderNames=[n])
    for n, _ in BUILDERS
]
'''

BUILDERS = ("b1", "b-fail", "b-true", "b-files", "b-slow")

# Twisted's Factory.doStart logs "<FactoryClass> starting on <port>" once a port is bound.
_PORT_LINE = re.compile(r"PBServerFactory starting on (\d+)")

_RESULT_QUERY = """
SELECT br.complete, br.results, b.results
FROM changes c
JOIN buildset_sourcestamps bss ON bss.sourcestampid = c.sourcestampid
JOIN buildrequests br ON br.buildsetid = bss.buildsetid
LEFT JOIN builds b ON b.buildrequestid = br.id
WHERE c.revision = ?
ORDER BY b.id DESC
"""

_BUILDS_QUERY = """
SELECT b.results
FROM changes c
JOIN buildset_sourcestamps bss ON bss.sourcestampid = c.sourcestampid
JOIN buildrequests br ON br.buildsetid = bss.buildsetid
JOIN builds b ON b.buildrequestid = br.id
WHERE c.revision = ? AND b.complete_at IS NOT NULL
ORDER BY b.id
"""


class RealMaster:
    """A running Buildbot 4.3 master: .port, .basedir, .log(), .trigger(builder), .stop()."""

    def __init__(self, basedir: Path, worker: str, password: str):
        self.basedir = Path(basedir)
        self.worker = worker
        self.password = password
        self.port: int | None = None
        self.pid: int | None = None

    @classmethod
    def start(cls, basedir, *, worker: str = "w1", password: str = "pw", timeout: float = 60.0):
        """Create the master dir, start the master, wait until it listens; return it."""
        self = cls(Path(basedir), worker, password)
        self.basedir.mkdir(parents=True, exist_ok=True)
        subprocess.run([BUILDBOT, "create-master", "-q", "-r", str(self.basedir)], check=True,
                       capture_output=True, timeout=120)
        (self.basedir / "master.cfg").write_text(MASTER_CFG)
        (self.basedir / "harness.json").write_text(json.dumps(dict(
            worker=worker, password=password, change_user=CHANGE_USER, change_pass=CHANGE_PASS)))
        try:
            # `buildbot start` gives up after 10 s by default, and on a loaded machine loading
            # the tac alone was seen to take 9 s: let it wait as long as we do.
            r = subprocess.run([BUILDBOT, "start", f"--start_timeout={timeout:g}", str(self.basedir)],
                               capture_output=True, text=True,
                               timeout=timeout + 30, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               stdin=subprocess.DEVNULL)
            pidfile = self.basedir / "twistd.pid"
            if pidfile.exists():
                self.pid = int(pidfile.read_text().strip())
            if r.returncode != 0:
                raise AssertionError(f"buildbot start failed ({r.returncode}): {r.stdout}{r.stderr}\n"
                                     + self.log()[-3000:])
            m = wait_until(lambda: _PORT_LINE.search(self.log()), timeout, what="the master's port in twistd.log")
            self.port = int(m.group(1))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        """`host:port` for `bbx slave create DIR MASTER ...`."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """A Twisted client endpoint string for the master's PB port."""
        return f"tcp:host=127.0.0.1:port={self.port}"

    def log(self) -> str:
        try:
            return (self.basedir / "twistd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_change(self, builder: str) -> str:
        """Ask for one build of `builder` (sendchange, branch = builder); return the revision."""
        rev = "bbx-" + uuid.uuid4().hex
        r = subprocess.run(
            [BUILDBOT, "sendchange", "--master", self.address,
             "--auth", f"{CHANGE_USER}:{CHANGE_PASS}", "--who", "bbx-tests", "--branch", builder,
             "--revision", rev, "--comments", "bbx interop", "bbx.txt"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError(f"sendchange failed ({r.returncode}): {r.stdout}{r.stderr}")
        return rev

    def result(self, rev: str) -> str | None:
        """The result name of the build request for change `rev` once complete, else None."""
        db = self.basedir / "state.sqlite"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute(_RESULT_QUERY, (rev,)).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:
            return None
        if rows and rows[0][0]:
            res = rows[0][2] if rows[0][2] is not None else rows[0][1]
            return RESULT_NAMES[res] if 0 <= res < len(RESULT_NAMES) else str(res)
        return None

    def build_results(self, rev: str) -> list[str]:
        """Result names of every finished build (retries included) for change `rev`, oldest first."""
        db = self.basedir / "state.sqlite"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute(_BUILDS_QUERY, (rev,)).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:
            return []
        return [RESULT_NAMES[r] if 0 <= r < len(RESULT_NAMES) else str(r) for (r,) in rows]

    def trigger(self, builder: str, timeout: float = 90.0) -> str:
        """Start one build of `builder` via sendchange; wait for it; return its result name."""
        rev = self.send_change(builder)
        return wait_until(lambda: self.result(rev), timeout, interval=0.05, what=f"the build on {builder}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the master (SIGTERM to its pid, then SIGKILL); safe to call twice."""
        pidfile = self.basedir / "twistd.pid"
        pid = self.pid
        if pid is None and pidfile.exists():
            try:
                pid = int(pidfile.read_text().strip())
            except ValueError:
                pid = None
        self.pid = None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a daemon is reaped late by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.fixture
def real_master(tmp_path):
    """A started real Buildbot 4.3 master (worker "w1", password "pw"), stopped afterwards."""
    master = RealMaster.start(tmp_path / "realmaster", worker="w1", password="pw")
    try:
        yield master
    finally:
        master.stop()
