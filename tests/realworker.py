"""Fixtures for the master tests: a real buildbot-worker 4.3.0, a real `bbx master`, and a tiny
PB control client run as a child process.

    python tests/realworker.py call ENDPOINT USER PASSWORD METHOD ARGS_JSON
        prints {"result": ...} or {"error": "<type>", "message": "..."} as one JSON line
    python tests/realworker.py run ENDPOINT USER PASSWORD BUILDER COMMAND_JSON [--interrupt-on TEXT]
        prints {"started": {...}}, one {"update": envelope} per update call, then {"complete": result};
        with --interrupt-on it calls handle.interrupt once TEXT appears in the output
        ("@start": as soon as the command has started)
    python tests/realworker.py malformed ENDPOINT NAME PASSWORD
        a slave-era peer whose answers are malformed (what no real Buildbot sends); prints one
        line per call it gets from the master
    python tests/realworker.py login ENDPOINT NAME PASSWORD LOGIN_TIMEOUT
        bbx's one login routine (bbx/pb/endpoints.login) once; prints "login ended: <why>"
    python tests/realworker.py stall ENDPOINT NAME PASSWORD
        logs in as slave NAME with the right password, then never answers the master's first
        call (print): prints "print received", then "login ended: <why>" when the master gives up
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support import BBX, BIN, Proc, run_bbx, wait_until  # noqa: E402

WORKER = str(BIN / "buildbot-worker")


# -- the master ---------------------------------------------------------------------------------

def make_master(directory: Path, *, slaves=("w1:pw1",), builders=(), keepalive=None) -> dict:
    """`bbx master create` with port 0; optionally rewrite the keepalive numbers; return the config."""
    args = ["master", "create", directory, "--listen", "tcp:0:interface=127.0.0.1"]
    for s in slaves:
        args += ["--slave", s]
    for b in builders:
        args += ["--builder", b]
    result = run_bbx(*args)
    assert result.returncode == 0, result.stderr
    path = Path(directory) / "master.toml"
    if keepalive is not None:
        interval, timeout = keepalive
        text = path.read_text()
        text = re.sub(r"keepalive_interval = \S+", f"keepalive_interval = {interval}", text)
        text = re.sub(r"keepalive_timeout = \S+", f"keepalive_timeout = {timeout}", text)
        path.write_text(text)
    import tomllib

    return tomllib.loads(path.read_text())


def admin(config: dict) -> tuple[str, str]:
    user = config["control"]["users"][0]
    return user["name"], user["password"]


class Master:
    """A `bbx master start DIR` child in the foreground, stopped on cleanup."""

    def __init__(self, directory: Path, *, env: dict | None = None):
        self.dir = Path(directory)
        self.config = __import__("tomllib").loads((self.dir / "master.toml").read_text())
        self.proc = Proc([BBX, "master", "start", self.dir], env=env,
                         log_path=self.dir.parent / f"{self.dir.name}.out")
        self.proc.wait_for_output("listening on", timeout=30)
        self.endpoint = (self.dir / "master.endpoint").read_text().strip()
        self.port = int(self.endpoint.rsplit("=", 1)[1])

    def log(self) -> str:
        return self.proc.output()

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        self.proc.wait_for_output(text, timeout)

    def stop(self) -> None:
        self.proc.terminate()


# -- the worker ---------------------------------------------------------------------------------

class Worker:
    """A real buildbot-worker basedir; `start()` daemonizes it; `stop()` always cleans up."""

    def __init__(self, basedir: Path, port: int, name: str, password: str, *, keepalive: int = 600):
        self.basedir = Path(basedir)
        self.name = name
        subprocess.run([WORKER, "create-worker", "-q", f"--keepalive={keepalive}", str(self.basedir),
                        f"127.0.0.1:{port}", name, password], check=True, timeout=60,
                       capture_output=True)

    @property
    def log_path(self) -> Path:
        return self.basedir / "twistd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> subprocess.CompletedProcess:
        """`buildbot-worker start`: rc 0 only once the worker saw "message from master: attached"."""
        return subprocess.run([WORKER, "start", str(self.basedir)], capture_output=True, text=True,
                              timeout=60)

    def start_foreground(self) -> Proc:
        """`buildbot-worker start --nodaemon` as a child; its log is twistd.log."""
        return Proc([WORKER, "start", "--nodaemon", self.basedir],
                    log_path=self.basedir.parent / f"{self.basedir.name}.out")

    @property
    def pid(self) -> int | None:
        try:
            return int((self.basedir / "twistd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def stop(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        subprocess.run([WORKER, "stop", str(self.basedir)], capture_output=True, timeout=30)
        if self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the control client -------------------------------------------------------------------------

def control(endpoint: str, user: str, password: str, method: str, *args, timeout: float = 40):
    """Call one control method in a child process; return the parsed JSON line it printed."""
    out = subprocess.run([sys.executable, __file__, "call", endpoint, user, password, method,
                          json.dumps(list(args))], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"control client printed nothing (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(lines[-1])


def start_run(tmp: Path, endpoint: str, user: str, password: str, builder: str, command,
              interrupt_on: str | None = None) -> Proc:
    """Start a `run` control client as a child; its JSON lines go to a log file."""
    argv = [sys.executable, __file__, "run", endpoint, user, password, builder, json.dumps(command)]
    if interrupt_on:
        argv += ["--interrupt-on", interrupt_on]
    return Proc(argv, log_path=tmp / f"run-{time.monotonic_ns()}.jsonl")


def run_lines(proc: Proc) -> list:
    return [json.loads(ln) for ln in proc.output().splitlines() if ln.startswith("{")]


def _client_main(argv: list[str]) -> int:
    from twisted.internet import defer, reactor, task
    from twisted.spread import pb

    from bbx.pb.endpoints import login
    from bbx.pb.updates import iter_updates

    def emit(obj):
        sys.stdout.write(json.dumps(obj, default=repr) + "\n")
        sys.stdout.flush()

    mode, endpoint, user, password = argv[:4]

    class Observer(pb.Referenceable):
        def __init__(self):
            self.done = defer.Deferred()
            self.text = ""
            self.handle = None
            self.interrupt_on = None
            self.interrupted = False

        def remote_update(self, updates):
            emit({"update": updates})
            for key, value in iter_updates(updates):
                if key in ("stdout", "stderr"):
                    self.text += value
            if (self.interrupt_on and self.interrupt_on in self.text and self.handle
                    and not self.interrupted):
                self.interrupted = True
                self.handle.callRemote("interrupt", "test interrupt")
            return 0

        def remote_complete(self, result):
            emit({"complete": result})
            self.done.callback(result)

    async def main():
        observer = Observer()
        broker = None
        try:
            persp, broker = await login(reactor, endpoint, user, password)
            if mode == "call":
                method, args = argv[4], json.loads(argv[5])
                result = await persp.callRemote(method, *args)
                emit({"result": result})
            else:
                builder, command = argv[4], json.loads(argv[5])
                if "--interrupt-on" in argv:
                    observer.interrupt_on = argv[argv.index("--interrupt-on") + 1]
                started = await persp.callRemote("run", builder, observer, command, None, {}, 1200, None)
                observer.handle = started["handle"]
                emit({"started": {"slave": started["slave"], "command_id": started["command_id"]}})
                if observer.interrupt_on == "@start" or (
                        observer.interrupt_on and observer.interrupt_on in observer.text
                        and not observer.interrupted):
                    observer.interrupted = True
                    observer.handle.callRemote("interrupt", "test interrupt")
                await observer.done
        except Exception as e:
            remote = getattr(e, "remoteType", None)
            kind = remote.decode() if isinstance(remote, bytes) else (remote or type(e).__name__)
            emit({"error": kind, "message": str(e)})
        finally:
            if broker is not None:
                broker.transport.loseConnection()

    def go(reactor_):
        return defer.ensureDeferred(main())

    task.react(go)
    return 0


def _malformed_main(argv: list[str]) -> int:
    """Log in like a slave-era peer whose answers no real Buildbot gives: info that is not a
    dict, a command table that is a string, builders nobody asked for, output that is not
    UTF-8. (The real buildslave 0.8.14 is in tests/peers08.py; this covers what it cannot.)"""
    from twisted.internet import defer, reactor, task
    from twisted.spread import pb

    from bbx.pb.endpoints import login

    endpoint, name, password = argv[:3]

    def say(*parts):
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()

    class Builder(pb.Referenceable):
        def __init__(self, name):
            self.name = name

        def remote_setMaster(self, remote):
            say("setMaster", self.name)

        def remote_print(self, message):
            say("builder message:", message)

        def remote_startBuild(self):
            pass

        def remote_startCommand(self, step_ref, command_id, command, args):
            say("startCommand", command_id, command)

            async def run():
                # Python 2 peers send bytes; these are not even UTF-8.
                await step_ref.callRemote("update", [[{b"stdout": b"caf\xe9 \xff\n"}, 0]])
                await step_ref.callRemote("update", [({b"rc": 0}, 0)])
                await step_ref.callRemote("complete", None)
            reactor.callLater(0, defer.ensureDeferred, run())

    class Bot(pb.Referenceable):
        def remote_print(self, message):
            say("message from master:", message)

        def remote_getSlaveInfo(self):
            return ["not", "a", "dict"]

        def remote_getCommands(self):
            return "not a table"

        def remote_getVersion(self):
            return 12345

        def remote_setBuilderList(self, wanted):
            say("setBuilderList", json.dumps([list(w) for w in wanted]))
            refs = {w[0]: Builder(w[0]) for w in wanted}
            refs.update({"intruder": Builder("intruder"), 7: "not a reference"})
            return refs

    async def main(_reactor):
        persp, broker = await login(reactor, endpoint, name, password, mind=Bot())
        say("logged in")
        done = defer.Deferred()
        broker.notifyOnDisconnect(lambda: done.callback(None))
        await done

    task.react(lambda r: defer.ensureDeferred(main(r)))
    return 0


def _stall_main(argv: list[str]) -> int:
    """A peer that logs in properly and then stalls the attach sequence."""
    from twisted.internet import defer, reactor, task
    from twisted.spread import pb

    from bbx.pb.endpoints import login

    endpoint, name, password = argv[:3]

    def say(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    class StalledBot(pb.Referenceable):
        def remote_print(self, message=""):
            say("print received")
            return defer.Deferred()  # never answered

    async def main(_reactor):
        try:
            await login(reactor, endpoint, name, password, mind=StalledBot(), timeout=10,
                        login_timeout=60)  # the master must be the one giving up
            say("login ended: attached (unexpected)")
        except Exception as e:
            say(f"login ended: {e}")

    task.react(lambda r: defer.ensureDeferred(main(r)))
    return 0


def _login_main(argv: list[str]) -> int:
    from twisted.internet import defer, reactor, task

    from bbx.pb.endpoints import LoginFailed, login

    endpoint, name, password, login_timeout = argv[:4]

    async def main(_reactor):
        try:
            await login(reactor, endpoint, name, password, timeout=10,
                        login_timeout=float(login_timeout))
            print("login ended: logged in", flush=True)
        except LoginFailed as e:
            print(f"login ended: {e.stage}: {e.reason}", flush=True)

    task.react(lambda r: defer.ensureDeferred(main(r)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["login"]:
        sys.exit(_login_main(sys.argv[2:]))
    if sys.argv[1:2] == ["malformed"]:
        sys.exit(_malformed_main(sys.argv[2:]))
    if sys.argv[1:2] == ["stall"]:
        sys.exit(_stall_main(sys.argv[2:]))
    sys.exit(_client_main(sys.argv[1:]))
