"""Benchmark builds: trivial builds back to back on one slave, and a big log into the store.

    .venv/bin/python bench/builds.py [--builds 1000] [--log-mb 200] [--engines sqlite,postgresql]
                                     [--profile DIR]

For each store engine in turn — the default SQLite file, then a PostgreSQL database on a
server this script starts (tests/postgres.py, PostgreSQL's default durable settings, unix
socket) — starts a real `bbx master` and a real `bbx slave` in a temporary directory, then,
from a control client in this process (over PB, not one `bbx` process per build):

1. triggers N builds of a one-step builder (`true`) one after another, each as soon as the
   previous one finished; prints builds/s and the p50 / p99 latency from the `build` call to
   the observer's buildFinished;
2. runs one build whose step writes --log-mb MB of output and prints how fast it went into
   the store (stored bytes / the build's duration, from the store's own timestamps).

--profile DIR runs the master and the slave under cProfile (DIR/ENGINE-master.prof,
DIR/ENGINE-slave.prof, written when they are stopped with SIGTERM) and prints the top functions
by own time and the load average, so CPU per build can be compared when wall time is noise.

Reference: a Buildbot 4.3 master + worker pair here needs 0.256 s per trivial build and stores
log at ~8 MB/s (the issue's numbers). The PostgreSQL targets (issue 12): <= 30 ms per trivial
build, >= 100 MB/s stored. Prints numbers, and a table of both engines at the end; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import wait_for

BIN = Path(sys.executable).parent
BBX = str(BIN / "bbx")

TOML = '''[master]
listen = "tcp:0:interface=127.0.0.1"
db = "{db}"

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=1000)
    parser.add_argument("--log-mb", type=int, default=200)
    parser.add_argument("--engines", default="sqlite,postgresql",
                        help="comma-separated: sqlite, postgresql")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory for cProfile output of the master and the slave")
    parser.add_argument("--no-cgroup", action="store_true",
                        help="the slave runs commands without cgroups (subreaper only)")
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    options = parser.parse_args()
    engines = options.engines.split(",")
    if len(engines) > 1:
        # One engine per child process: a Twisted reactor runs once per process.
        results = {}
        for engine in engines:
            out = Path(tempfile.mkstemp(prefix="bbx-bench-result-")[1])
            extra = ["--profile", str(options.profile)] if options.profile else []
            extra += ["--no-cgroup"] if options.no_cgroup else []
            subprocess.run([sys.executable, __file__, "--builds", str(options.builds),
                            "--log-mb", str(options.log_mb), "--engines", engine,
                            "--result-file", str(out), *extra])
            if out.read_text().strip():
                results[engine] = json.loads(out.read_text())
            out.unlink()
        print()
        print(f"{'engine':<12} {'ms/build':>9} {'p50 ms':>8} {'p99 ms':>8} {'log MB/s':>9} "
              f"{'master RSS MB':>14} {'CPU ms/build m+s':>17} {'CPU s/100MB m+s':>16} "
              f"{'load':>5}")
        for engine, r in results.items():
            print(f"{engine:<12} {r['per_build_ms']:>9.1f} {r['p50_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['log_mb_s']:>9.0f} {r['rss_mb']:>14.0f} "
                  f"{r['cpu_master_ms']:>8.1f}+{r['cpu_slave_ms']:<8.1f} "
                  f"{r['log_cpu_master_s']:>7.2f}+{r['log_cpu_slave_s']:<8.2f} {r['load']:>5.1f}")
        return 0
    engine = engines[0]
    if options.profile:
        options.profile = options.profile.resolve()
        options.profile.mkdir(parents=True, exist_ok=True)
    options.engine = engine
    print(f"== {engine} (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
          flush=True)
    if engine == "sqlite":
        run_farm("bbx.sqlite", options)
    elif engine == "postgresql":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.postgres import PostgresServer, missing_reason

        reason = missing_reason()
        if reason:
            print(f"skipped: {reason}")
            return 0
        server = PostgresServer.start(durable=True)
        try:
            run_farm(server.new_database(), options)
        finally:
            server.stop()
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    return 0


def run_farm(db: str, options) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bbx-bench-builds-"))
    master_dir = root / "m"
    master_dir.mkdir()
    (master_dir / "master.toml").write_text(TOML.format(size=options.log_mb * 1024 * 1024,
                                                        db=db))
    os.chmod(master_dir / "master.toml", 0o600)
    procs = []
    try:
        master_out = open(root / "master.out", "wb")
        procs.append(subprocess.Popen(bbx_argv(options, "master", "master", "start",
                                               str(master_dir)), stdout=master_out, cwd=root,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: (master_dir / "master.endpoint").exists(), 30, "the master")
        endpoint = (master_dir / "master.endpoint").read_text().strip()
        port = endpoint.rsplit("=", 1)[1]
        subprocess.run([BBX, "slave", "create", str(root / "s"), f"127.0.0.1:{port}", "s1", "pw"],
                       check=True, capture_output=True)
        if options.no_cgroup:
            toml = root / "s" / "slave.toml"
            toml.write_text(toml.read_text().replace("cgroup = true", "cgroup = false"))
        slave_out = open(root / "slave.out", "wb")
        procs.append(subprocess.Popen(bbx_argv(options, "slave", "slave", "start",
                                               str(root / "s")), stdout=slave_out, cwd=root,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: b"message from master: attached" in (root / "slave.out").read_bytes(),
                 30, "the slave")
        return run_client(endpoint, options, procs[0].pid, procs[1].pid)
    finally:
        import signal

        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if options.profile:
            print_profiles(options.profile, options.engine)


def bbx_argv(options, role: str, *args: str) -> list[str]:
    if options.profile is None:
        # `python -m bbx` rather than the venv's script, so PYTHONPATH can point the roles at
        # another checkout (git archive main | tar -x -C /tmp/old) for an interleaved A/B. The
        # roles run in the temporary directory: `-m` puts the working directory first on
        # sys.path, and from the repository's root it would beat PYTHONPATH.
        return [sys.executable, "-m", "bbx", *args]
    out = options.profile / f"{options.engine}-{role}.prof"
    # CPU time, not wall time: on a loaded machine wall time is mostly other processes' turn.
    return [sys.executable, "-c", _PROFILED, str(out), *args]


_PROFILED = """
import atexit, cProfile, sys, time
out = sys.argv[1]
sys.argv = ["bbx", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
atexit.register(lambda: (profile.disable(), profile.dump_stats(out)))
profile.enable()
from bbx.startup import main
main()
"""


def print_profiles(profile: Path, engine: str, top: int = 25) -> None:
    import pstats

    for prof in sorted(profile.glob(f"{engine}-*.prof")):
        stats = pstats.Stats(str(prof))
        print(f"\n=== {prof.stem}: {stats.total_tt:.2f} s CPU in profiled code; top {top} by own time")
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
        for (file, line, func), (cc, nc, tt, ct, _callers) in rows:
            short = file if len(file) < 60 else "..." + file[-57:]
            print(f"{tt:6.2f}s own {ct:6.2f}s cum {nc:>9} calls  {func}  {short}:{line}")


def rss_mb(pid: int) -> float:
    """A process's resident set size in MB (Linux /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds a process used so far, itself and its reaped children (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_pair(master_pid: int, slave_pid: int) -> tuple[float, float]:
    return cpu_s(master_pid), cpu_s(slave_pid)


def run_client(endpoint: str, options, master_pid: int, slave_pid: int) -> dict:
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
        cpu0 = cpu_pair(master_pid, slave_pid)
        start = time.perf_counter()
        for _ in range(options.builds):
            observer = Observer()
            t0 = time.perf_counter()
            await persp.callRemote("build", "trivial", observer, True)
            info = await observer.done
            latencies.append(time.perf_counter() - t0)
            bad += info["result_name"] != "success"
        total = time.perf_counter() - start
        cpu1 = cpu_pair(master_pid, slave_pid)
        build_cpu = [(b - a) / options.builds * 1000 for a, b in zip(cpu0, cpu1)]
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"trivial builds: {options.builds} in {total:.2f} s = "
              f"{options.builds / total:.0f} builds/s ({total / options.builds * 1000:.1f} ms "
              f"per build; Buildbot 4.3: 256 ms); trigger->result p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms; not success: {bad}")
        # CPU per build does not depend on how busy the machine is; wall time does.
        print(f"CPU per trivial build: master {build_cpu[0]:.1f} ms, slave (with its "
              f"commands) {build_cpu[1]:.1f} ms")
        cpu0 = cpu_pair(master_pid, slave_pid)

        answer = await persp.callRemote("build", "big", None, False)
        request_id = answer["request_id"]
        build = None
        while build is None or build["finished_at"] is None:
            await task.deferLater(reactor, 0.25, lambda: None)
            found = await persp.callRemote("builds", "big", 1)
            if found and found[0]["request_id"] == request_id:
                build = found[0]
        cpu1 = cpu_pair(master_pid, slave_pid)
        info = await persp.callRemote("build_info", build["id"])
        stored = sum(s["log_bytes"] for s in info["steps"])
        seconds = build["finished_at"] - build["started_at"]
        print(f"big log: {stored / 1e6:.1f} MB stored in {seconds:.2f} s = "
              f"{stored / 1e6 / seconds:.0f} MB/s into the store (Buildbot 4.3: ~8 MB/s); "
              f"result {build['result_name']}")
        log_cpu = [(b - a) / (stored / 1e8) for a, b in zip(cpu0, cpu1)]
        print(f"CPU per 100 MB of log (includes up to 0.25 s of polling): master "
              f"{log_cpu[0]:.2f} s, slave (with its command) {log_cpu[1]:.2f} s")
        rss = rss_mb(master_pid)
        print(f"master RSS after the run: {rss:.0f} MB; slave RSS {rss_mb(slave_pid):.0f} MB "
              f"(a fork copies its page tables: bench/README.md)")
        numbers.update(per_build_ms=total / options.builds * 1000, p50_ms=p50 * 1000,
                       p99_ms=p99 * 1000, log_mb_s=stored / 1e6 / seconds, rss_mb=rss,
                       cpu_master_ms=build_cpu[0], cpu_slave_ms=build_cpu[1],
                       log_cpu_master_s=log_cpu[0], log_cpu_slave_s=log_cpu[1],
                       load=os.getloadavg()[0])
        if options.result_file:
            Path(options.result_file).write_text(json.dumps(numbers))
        broker.transport.loseConnection()

    numbers: dict = {}
    task.react(lambda r: defer.ensureDeferred(main(r)))  # exits the process when done
    return numbers


if __name__ == "__main__":
    sys.exit(main())
