"""Benchmark builds: trivial builds back to back on one slave, and a big log into the store.

    .venv/bin/python bench/builds.py [--builds 1000] [--log-mb 200]

Starts a real `bbx master` and a real `bbx slave` in a temporary directory, then, from a
control client in this process (over PB, not one `bbx` process per build):

1. triggers N builds of a one-step builder (`true`) one after another, each as soon as the
   previous one finished; prints builds/s and the p50 / p99 latency from the `build` call to
   the observer's buildFinished;
2. runs one build whose step writes --log-mb MB of output and prints how fast it went into
   the store (stored bytes / the build's duration, from the store's own timestamps).

Reference: a Buildbot 4.3 master + worker pair here needs 0.256 s per trivial build and stores
log at ~8 MB/s (the issue's numbers). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
BBX = str(BIN / "bbx")

TOML = '''[master]
listen = "tcp:0:interface=127.0.0.1"

[[slaves]]
name = "s1"
password = "pw"

[[builders]]
name = "trivial"
slaves = ["s1"]
[[builders.steps]]
command = ["true"]

[[builders]]
name = "big"
slaves = ["s1"]
[[builders.steps]]
name = "write"
command = "yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab | head -c {size}"

[control]
users = [{{ name = "admin", password = "admin-pw" }}]
'''


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=1000)
    parser.add_argument("--log-mb", type=int, default=200)
    options = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bbx-bench-builds-"))
    master_dir = root / "m"
    master_dir.mkdir()
    (master_dir / "master.toml").write_text(TOML.format(size=options.log_mb * 1024 * 1024))
    os.chmod(master_dir / "master.toml", 0o600)
    procs = []
    try:
        master_out = open(root / "master.out", "wb")
        procs.append(subprocess.Popen([BBX, "master", "start", str(master_dir)], stdout=master_out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: (master_dir / "master.endpoint").exists(), 30, "the master")
        endpoint = (master_dir / "master.endpoint").read_text().strip()
        port = endpoint.rsplit("=", 1)[1]
        subprocess.run([BBX, "slave", "create", str(root / "s"), f"127.0.0.1:{port}", "s1", "pw"],
                       check=True, capture_output=True)
        slave_out = open(root / "slave.out", "wb")
        procs.append(subprocess.Popen([BBX, "slave", "start", str(root / "s")], stdout=slave_out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: b"message from master: attached" in (root / "slave.out").read_bytes(),
                 30, "the slave")
        return run_client(endpoint, options)
    finally:
        import signal

        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def run_client(endpoint: str, options) -> int:
    from twisted.internet import defer, reactor, task
    from twisted.spread import pb

    from bbx.pb.endpoints import login

    class Observer(pb.Referenceable):
        def __init__(self):
            self.done = defer.Deferred()

        def remote_buildStarted(self, info):
            pass

        def remote_stepStarted(self, info):
            pass

        def remote_update(self, updates):
            return None

        def remote_stepFinished(self, info):
            pass

        def remote_buildFinished(self, info):
            if not info.get("requeued"):
                self.done.callback(info)

    async def main(_reactor):
        persp, broker = await login(reactor, endpoint, "admin", "admin-pw")
        # Warm up (first build creates the builder directory on the slave).
        for _ in range(5):
            observer = Observer()
            await persp.callRemote("build", "trivial", observer, True)
            await observer.done
        latencies = []
        bad = 0
        start = time.perf_counter()
        for _ in range(options.builds):
            observer = Observer()
            t0 = time.perf_counter()
            await persp.callRemote("build", "trivial", observer, True)
            info = await observer.done
            latencies.append(time.perf_counter() - t0)
            bad += info["result_name"] != "success"
        total = time.perf_counter() - start
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"trivial builds: {options.builds} in {total:.2f} s = "
              f"{options.builds / total:.0f} builds/s ({total / options.builds * 1000:.1f} ms "
              f"per build; Buildbot 4.3: 256 ms); trigger->result p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms; not success: {bad}")

        answer = await persp.callRemote("build", "big", None, False)
        request_id = answer["request_id"]
        build = None
        while build is None or build["finished_at"] is None:
            await task.deferLater(reactor, 0.25, lambda: None)
            found = await persp.callRemote("builds", "big", 1)
            if found and found[0]["request_id"] == request_id:
                build = found[0]
        info = await persp.callRemote("build_info", build["id"])
        stored = sum(s["log_bytes"] for s in info["steps"])
        seconds = build["finished_at"] - build["started_at"]
        print(f"big log: {stored / 1e6:.1f} MB stored in {seconds:.2f} s = "
              f"{stored / 1e6 / seconds:.0f} MB/s into the store (Buildbot 4.3: ~8 MB/s); "
              f"result {build['result_name']}")
        broker.transport.loseConnection()

    task.react(lambda r: defer.ensureDeferred(main(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
