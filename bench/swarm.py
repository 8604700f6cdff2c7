"""N slaves against one real `bbx master`: attach time, memory, ping, a reconnect storm, idle CPU.

    .venv/bin/python bench/swarm.py                      # N = 100 1000 5000 10000
    .venv/bin/python bench/swarm.py 300 2000 --procs 1   # chosen N, one swarm process
    .venv/bin/python bench/swarm.py 1000 --idle-window 60 --pings 20

For each N it writes, in a temporary directory, a master.toml with slaves s0..s<N-1> over ten
builders, starts `bbx master start DIR` (port 0) and a swarm of minimal worker-era PB slaves
(tests/swarm.py: one reactor per process, ceil(N / 5000) processes unless --procs, each slave
from its own 127.1.x.y address), then measures:

- checkconfig: `bbx master checkconfig DIR` whole-process time on that master.toml;
- attach: seconds from starting the swarm until all N are attached (login answered);
- RSS: the master's VmRSS (/proc/PID/status) with all attached, and (RSS - RSS before the
  swarm) / N per slave;
- ping: --pings runs of `bbx ping b0 --count 10 --json` one after another while all are
  attached: whole-process time p50 / p99, and the round trips the master reports, p50 / p99;
- idle CPU: the master's utime + stime (/proc/PID/stat) over --idle-window seconds with all
  N attached and nothing but keepalives (both sides every 30 s) flowing, as % of one core;
- storm: the master killed (SIGKILL) and started again on the same port; seconds from the
  restart until all N are attached again, and the same ping figures taken throughout;
- retries: connects or logins the swarm had to try again (a lost connection counts once, so
  the storm's figure leaves out the N losses the kill itself caused);
- the swarm's own CPU over the whole run (% of one core per process): near 100 % means the
  swarm, not the master, set the pace.

Every figure is printed with the load average it was taken under (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.swarm import SwarmProcesses, write_farm  # noqa: E402

BIN = Path(sys.executable).parent
BBX = str(BIN / "bbx")
TICKS = os.sysconf("SC_CLK_TCK")
PER_SWARM_PROCESS = 5000


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pct(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Master:
    def __init__(self, directory: Path):
        self.dir = directory
        self.proc = None

    def start(self, timeout: float = 120.0) -> str:
        endpoint = self.dir / "master.endpoint"
        endpoint.unlink(missing_ok=True)
        log = open(self.dir / "master.out", "ab")
        self.proc = subprocess.Popen([BBX, "master", "start", str(self.dir)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not endpoint.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the master did not start; see {self.dir / 'master.out'}")
            time.sleep(0.02)
        return endpoint.read_text().strip()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def ping_once(directory: Path) -> tuple[float, list[float]]:
    """One `bbx ping b0 --count 10 --json`: (whole-process seconds, RTTs) or (t, []) on error."""
    start = time.monotonic()
    out = subprocess.run([BBX, "ping", "b0", "--count", "10", "--json", "--master-dir",
                          str(directory), "--timeout", "30"], capture_output=True, text=True)
    took = time.monotonic() - start
    if out.returncode != 0:
        return took, []
    return took, list(json.loads(out.stdout).get("rtts") or [])


def ping_figures(runs: list[tuple[float, list[float]]]) -> dict:
    ok = [r for r in runs if r[1]]
    procs = [t for t, _ in ok]
    rtts = [x for _, r in ok for x in r]
    return {"runs": len(runs), "failed": len(runs) - len(ok),
            "proc_p50": pct(procs, 50), "proc_p99": pct(procs, 99),
            "rtt_p50": pct(rtts, 50), "rtt_p99": pct(rtts, 99), "load": load()}


def checkconfig_time(directory: Path) -> float:
    start = time.monotonic()
    subprocess.run([BBX, "master", "checkconfig", str(directory)], check=True,
                   capture_output=True)
    return time.monotonic() - start


def one(n: int, args, workdir: Path) -> dict:
    directory = workdir / f"m{n}"
    write_farm(directory, n)
    result = {"n": n, "checkconfig": checkconfig_time(directory), "checkconfig_load": load()}
    master = Master(directory)
    endpoint = master.start()
    port = int(endpoint.rsplit("=", 1)[1])
    pid = master.proc.pid
    time.sleep(0.5)  # let the just-started master settle before its baseline RSS
    base_rss = rss_kb(pid)
    procs = args.procs or max(1, -(-n // PER_SWARM_PROCESS))
    lifetime = args.bound
    swarm_started = time.monotonic()
    swarm = SwarmProcesses(endpoint, n, processes=procs, lifetime=lifetime)
    try:
        result["attach"] = swarm.wait(lambda s: s.attached == n, args.bound / 3, "all attached")
        result["attach_load"] = load()
        result["attach_retries"] = swarm.failures
        result["procs"] = procs
        time.sleep(1.0)
        rss = rss_kb(pid)
        result.update(rss_mb=rss / 1024, rss_per_slave_kb=(rss - base_rss) / n)
        result["ping"] = ping_figures([ping_once(directory) for _ in range(args.pings)])
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_window)
        result["idle_cpu"] = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        result["idle_load"] = load()
        # The storm: same port, all N reconnecting with their backoff.
        text = (directory / "master.toml").read_text()
        (directory / "master.toml").write_text(
            re.sub(r'^listen = .*$', f'listen = "tcp:{port}:interface=127.0.0.1"', text,
                   count=1, flags=re.M))
        logins_before = swarm.logins
        master.kill()
        restarted = time.monotonic()
        master.start()
        pid = master.proc.pid
        runs: list = []
        done = threading.Event()

        def storm_pings():
            while not done.is_set():
                runs.append(ping_once(directory))

        pinger = threading.Thread(target=storm_pings, daemon=True)
        pinger.start()
        swarm.wait(lambda s: s.attached == n and s.logins >= logins_before + n,
                   args.bound / 3, "all re-attached")
        result["reattach"] = time.monotonic() - restarted
        result["reattach_load"] = load()
        result["reattach_retries"] = swarm.failures - result["attach_retries"] - n
        done.set()
        pinger.join(timeout=60)
        result["storm_ping"] = ping_figures(runs)
        result["swarm_cpu"] = [100 * cpu_seconds(p) / (time.monotonic() - swarm_started)
                               for p in swarm.pids]
    finally:
        swarm.stop()
        master.stop()
    return result


def row(r: dict) -> str:
    p, s = r["ping"], r["storm_ping"]
    return (f"| {r['n']:>6} | {r['checkconfig']:.2f} | {r['attach']:.1f} ({r['attach_load']}; "
            f"{r['attach_retries']} retries) | "
            f"{r['rss_mb']:.0f} | {r['rss_per_slave_kb']:.1f} | "
            f"{p['proc_p50']:.2f} / {p['proc_p99']:.2f} | "
            f"{1000 * p['rtt_p50']:.1f} / {1000 * p['rtt_p99']:.1f} | "
            f"{r['idle_cpu']:.1f} ({r['idle_load']}) | "
            f"{r['reattach']:.1f} ({r['reattach_load']}; {r['reattach_retries']} retries) | "
            f"{s['proc_p50']:.2f} / {s['proc_p99']:.2f} ({s['failed']}/{s['runs']} failed) | "
            f"{1000 * s['rtt_p50']:.1f} / {1000 * s['rtt_p99']:.1f} | "
            f"{r['procs']} × {'/'.join(f'{c:.0f}' for c in r['swarm_cpu'])} |")


HEADER = ("| N | checkconfig s | all attached s (load; retries) | master RSS MB | KB / slave | "
          "ping proc p50 / p99 s | ping RTT p50 / p99 ms | idle CPU % (load) | "
          "re-attached s (load; retries) | storm ping proc p50 / p99 s | storm RTT p50 / p99 ms | "
          "swarm procs × CPU % |\n|" + "---|" * 12)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="*", type=int, default=[100, 1000, 5000, 10000])
    parser.add_argument("--procs", type=int, default=0, help="swarm processes (default: "
                        f"one per {PER_SWARM_PROCESS} slaves)")
    parser.add_argument("--pings", type=int, default=10, help="bbx ping runs while idle")
    parser.add_argument("--idle-window", type=float, default=30.0,
                        help="seconds over which idle CPU is measured (one keepalive cycle: 30)")
    parser.add_argument("--bound", type=float, default=600.0,
                        help="the swarm stops itself after this many seconds")
    args = parser.parse_args(argv)
    print(f"cores: {os.cpu_count()}, somaxconn: "
          f"{Path('/proc/sys/net/core/somaxconn').read_text().strip()}, load: {load()}",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bbx-swarm-") as tmp:
        for n in args.n:
            results.append(one(n, args, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    print(HEADER)
    for r in results:
        print(row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
