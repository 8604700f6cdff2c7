"""What the slave's guarantees cost: containment per command, redaction per MB, the guard (not a test).

    .venv/bin/python bench/slave_overhead.py [--commands 200] [--mb 200]

1. Runs `true` --commands times, one after another, through RunProcess in this process (no
   master; updates go nowhere) under each containment: none (session, group, cookie only),
   subreaper, and cgroup (where this host allows it). Prints p50 / p99 / mean ms per command,
   from start() to its Deferred firing.
2. Pushes --mb MB of base64 text through StreamRedactor in 64 KiB reads (one pipe read) with
   0, 1 and 5 secrets and prints MB/s (0 secrets: the slave skips the redactor entirely; shown
   as the floor of a plain bytes copy).
3. Starts a real slave (no master reachable) and prints the guard's RSS and the slave's CPU use
   over 10 s idle (the orphan scan runs every 0.5 s).
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
READ = 64 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _Sink:
    def add(self, key, value):
        pass


def per_command(modes, n: int, workdir: str) -> dict[str, list[float]]:
    """{mode: seconds per command}; one reactor run for all modes (it cannot be restarted)."""
    from twisted.internet import defer, reactor

    from bbx.slave.containment import Containment
    from bbx.slave.runprocess import RunProcess

    results: dict[str, list[float]] = {}

    async def one_mode(mode: str) -> None:
        containment = None
        if mode != "none":
            containment = Containment(reactor, key=f"bench-{os.getpid()}", cgroups=mode == "cgroup",
                                      guard=False)
            containment.start()
            if containment.mode != mode:
                print(f"  ({mode} unavailable here: {containment.why_no_cgroup})")
                await containment.stop()
                return
        times = results.setdefault(mode, [])
        for _ in range(n):
            run = RunProcess(reactor, ["true"], workdir=workdir, env=None, updates=_Sink(),
                             log_environ=False, containment=containment)
            t = time.perf_counter()
            await run.start()
            times.append(time.perf_counter() - t)
        if containment is not None:
            await containment.stop()

    async def all_modes() -> None:
        try:
            for mode in modes:
                await one_mode(mode)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(all_modes()))
    reactor.run()
    return results


def redaction(mb: float, secrets_n: int) -> float:
    import base64

    from bbx.slave.redact import Secrets, StreamRedactor

    raw = base64.encodebytes(os.urandom(int(mb * 750_000)))
    values = [base64.b32encode(os.urandom(15)).decode() for _ in range(secrets_n)]
    t = time.perf_counter()
    if secrets_n == 0:
        for i in range(0, len(raw), READ):
            bytes(raw[i:i + READ])
    else:
        redactor = StreamRedactor(Secrets(values))
        for i in range(0, len(raw), READ):
            redactor.feed(raw[i:i + READ])
        redactor.flush()
    return len(raw) / 1e6 / (time.perf_counter() - t)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def guard_and_idle(root: Path) -> None:
    created = subprocess.run([BBX, "slave", "create", root / "s", "127.0.0.1:9", "s1", "pw"],
                             capture_output=True, text=True)
    if created.returncode:
        raise SystemExit(created.stderr)
    proc = subprocess.Popen([BBX, "slave", "start", root / "s"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        guard = None
        while guard is None and time.monotonic() < deadline:
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                    except OSError:
                        continue
                    if b"bbx.slave.guard" in b" ".join(argv) and str(proc.pid).encode() in argv:
                        guard = int(name)
            time.sleep(0.05)
        if guard is None:
            print("guard: not found")
            return
        time.sleep(1)
        rss = [ln for ln in Path(f"/proc/{guard}/status").read_text().splitlines()
               if ln.startswith("VmRSS")][0].split()[1]
        print(f"guard process: RSS {int(rss) / 1024:.1f} MiB")
        before = _cpu(proc.pid)
        time.sleep(10)
        print(f"idle slave (reconnecting to nothing, orphan scan every 0.5 s): "
              f"{(_cpu(proc.pid) - before) / 10 * 100:.2f} % of one CPU")
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--mb", type=float, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bbx-bench-slave-"))
    try:
        print(f"per command (`true`, {args.commands} in a row; ms):")
        results = per_command(("none", "subreaper", "cgroup"), args.commands, str(root / "wd"))
        for mode, times in results.items():
            if times:
                ms = sorted(t * 1000 for t in times)
                print(f"  {mode:10s} p50 {statistics.median(ms):6.2f}  p99 {ms[int(len(ms) * .99) - 1]:6.2f}"
                      f"  mean {statistics.fmean(ms):6.2f}")
        print(f"redaction ({args.mb:g} MB of base64 in 64 KiB reads):")
        for n in (0, 1, 5):
            label = "no secret (plain copy)" if n == 0 else f"{n} secret(s)"
            print(f"  {label:24s} {redaction(args.mb, n):8.0f} MB/s")
        guard_and_idle(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
