"""Measure what hostile clients do to a master (issue 8, cases 1, 2, 3 and 7).

    .venv/bin/python bench/hostile_port.py [--code DIR] [--only list,idle,name,passwords,garbage,liveness]

Starts a real `bbx master` (default settings, port 0) with a real `bbx slave` attached, in a
temporary directory, then, from plain sockets or PB clients in child processes:

  list       20 MB of Banana list-open tokens before login: the master's RSS before, at its
             peak (VmHWM) and after
  idle       2,000 idle sockets: how many the master still holds open after 60 s, and
             whether `bbx ping` answers meanwhile
  name       50 logins with a 600 KB name: seconds, and how much master.log grew
  passwords  200 wrong passwords, one after another: seconds (stops at --patience and says
             how many were answered)
  garbage    20 connections of garbage: log bytes per connection, tracebacks
  liveness   the defaults: a proxy between slave and master stops forwarding; seconds until
             each side declares the other gone (gives up at --patience per side)

--nofile N runs the master under `ulimit -n N` (the issue's case 2 used 256).
--code DIR runs the master and slave from another checkout (e.g. `git archive main | tar -x
-C DIR`), for before/after figures with the same client code. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import (HOSTILE, LIST_OPEN, connect, is_closed, reset_peak_rss, rss_kib,  # noqa: E402
                           run_child, send_until_cut)
from tests.proxy import FreezableProxy  # noqa: E402
from tests.support import Proc, wait_until  # noqa: E402

# Runs `bbx ARGS` from the checkout in argv[1], bypassing this venv's editable install.
LAUNCH = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
          "if '__editable__' not in type(f).__module__ and '__editable__' not in repr(f)]; "
          "sys.path.insert(0, sys.argv.pop(1)); from bbx.cli import main; sys.argv[0] = 'bbx'; "
          "main()")


def bbx_argv(code: str | None, *args) -> list[str]:
    if code:
        return [sys.executable, "-c", LAUNCH, code, *map(str, args)]
    return [str(Path(sys.executable).parent / "bbx"), *map(str, args)]


def run(code, *args, timeout=120, env=None):
    full = dict(os.environ, **(env or {}))
    return subprocess.run(bbx_argv(code, *args), capture_output=True, text=True, timeout=timeout,
                          env=full)


class Setup:
    def __init__(self, root: Path, code: str | None, nofile: int | None = None):
        self.root, self.code = root, code
        self.dir = root / "m"
        made = run(code, "master", "create", self.dir, "--listen", "tcp:0:interface=127.0.0.1",
                   "--slave", "s1:pw-s1")
        assert made.returncode == 0, made.stderr
        import tomllib
        cfg = tomllib.loads((self.dir / "master.toml").read_text())
        user = cfg["control"]["users"][0]
        self.user, self.password = user["name"], user["password"]
        argv = bbx_argv(code, "master", "start", self.dir)
        if nofile:
            argv = ["sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', *argv]
        self.master = Proc(argv, log_path=root / "master.out")
        self.master.wait_for_output("listening on", timeout=30)
        self.port = int((self.dir / "master.endpoint").read_text().strip().rsplit("=", 1)[1])
        self.slaves: list[Proc] = []

    def start_slave(self, port=None, name="s1", extra=()):
        d = self.root / f"slave-{len(self.slaves)}"
        made = run(self.code, "slave", "create", d, f"127.0.0.1:{port or self.port}", name,
                   f"pw-{name}", *extra)
        assert made.returncode == 0, made.stderr
        proc = Proc(bbx_argv(self.code, "slave", "start", d), log_path=self.root / f"{d.name}.out")
        proc.wait_for_output("message from master: attached", timeout=30)
        self.slaves.append(proc)
        return proc

    def ping(self, timeout=60) -> tuple[bool, float]:
        t0 = time.monotonic()
        try:
            r = run(self.code, "ping", "s1", timeout=timeout, env={"BBX_MASTER_DIR": str(self.dir)})
            ok = r.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        return ok, time.monotonic() - t0

    @property
    def log_size(self) -> int:
        return (self.dir / "master.log").stat().st_size

    def stop(self):
        for p in self.slaves:
            p.terminate()
        self.master.terminate()


def bench_list(s: Setup, _args):
    pid = s.master.pid
    reset_peak_rss(pid)
    before = rss_kib(pid)
    t0 = time.monotonic()
    sent = send_until_cut(s.port, LIST_OPEN * (10 * 1024 * 1024))
    cut = time.monotonic() - t0
    peak = rss_kib(pid, "VmHWM")
    time.sleep(1)
    after = rss_kib(pid)
    print(f"list:      20 MB of list-opens: sent {sent / 1e6:.1f} MB before the cut ({cut:.2f} s); "
          f"RSS {before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB, {after / 1024:.0f} MB after")


def bench_idle(s: Setup, _args):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = [connect(s.port) for _ in range(2000)]
    ok, took = s.ping()
    time.sleep(60)
    still = sum(1 for x in socks if not is_closed(x))
    for x in socks:
        x.close()
    print(f"idle:      2,000 idle sockets: ping {'answered' if ok else 'FAILED'} in {took:.2f} s; "
          f"{still} still open after 60 s")


def bench_name(s: Setup, _args):
    size = s.log_size
    answer = run_child("logins", "127.0.0.1", s.port, "@600000", "pw", 50)
    grew = s.log_size - size
    print(f"name:      50 logins with a 600 KB name: {answer['elapsed']:.2f} s, master.log "
          f"+{grew / 1e6:.2f} MB ({grew / 50:.0f} bytes per try)")


def bench_passwords(s: Setup, args):
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, HOSTILE, "logins", "127.0.0.1", str(s.port), s.user,
                             "wrong", "200"], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=args.patience)
        answer = json.loads(out.strip().splitlines()[-1])
        times = answer["times"]
        print(f"passwords: 200 wrong passwords: {answer['elapsed']:.2f} s "
              f"(last try answered after {times[-1]:.2f} s)")
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        done = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"tries"')]
        print(f"passwords: 200 wrong passwords: {len(done)} answered in "
              f"{time.monotonic() - t0:.0f} s (--patience), then stopped")
    ok, took = s.ping(timeout=60)
    print(f"           a new login from the same address then: ping "
          f"{'answered' if ok else 'FAILED'} in {took:.2f} s")


def bench_garbage(s: Setup, _args):
    size = s.log_size
    for n in range(20):
        sock = connect(s.port)
        sock.sendall(bytes([0xFF, n]) * 32)
        wait_until(lambda: is_closed(sock), 10)
        sock.close()
    time.sleep(0.5)
    text = (s.dir / "master.log").read_text(errors="replace")
    grew = s.log_size - size
    print(f"garbage:   20 garbage connections: master.log +{grew} bytes ({grew / 20:.0f} per "
          f"connection), {text.count('Traceback')} tracebacks in the log")


def bench_liveness(s: Setup, args):
    proxy = FreezableProxy(s.port)
    slave = s.start_slave(port=proxy.port)
    time.sleep(1)
    log = s.dir / "master.log"
    mark = log.stat().st_size
    proxy.freeze()
    t0 = time.monotonic()
    seen = {}
    while len(seen) < 2 and time.monotonic() - t0 < args.patience:
        if "master" not in seen and "silent for" in log.read_text(errors="replace")[mark:]:
            seen["master"] = time.monotonic() - t0
        if "slave" not in seen and "sent nothing for" in slave.output():
            seen["slave"] = time.monotonic() - t0
        time.sleep(0.5)
    proxy.close()

    def fmt(side):
        return f"{seen[side]:.0f} s" if side in seen else f"> {args.patience:.0f} s (gave up)"
    print(f"liveness:  defaults, link frozen: the master noticed after {fmt('master')}, "
          f"the slave after {fmt('slave')}")


BENCHES = {"list": bench_list, "idle": bench_idle, "name": bench_name,
           "passwords": bench_passwords, "garbage": bench_garbage, "liveness": bench_liveness}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", help="run master and slave from this checkout")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--patience", type=float, default=300.0)
    parser.add_argument("--nofile", type=int, help="the master's descriptor limit (ulimit -n)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bbx-hostile-"))
    try:
        for name in args.only.split(","):
            # A fresh master per measurement: one's aftermath must not colour the next.
            s = Setup(root / name, args.code, args.nofile)
            try:
                if name != "liveness":
                    s.start_slave()
                BENCHES[name](s, args)
            finally:
                s.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
