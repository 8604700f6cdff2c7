"""How fast a build's log goes into the store: MB/s through the real Store (not a test).

    .venv/bin/python bench/store_write.py [--mb 200] [--chunk 65536] [--dir DIR]
                                          [--engine sqlite|postgresql|both] [--url URL]

With --engine postgresql (or both, the default), a PostgreSQL server is started for the run
(tests/postgres.py, PostgreSQL's default durable settings) unless --url names a database.

Appends `--mb` MB of log text to one step in `--chunk`-sized pieces, as a RemoteCommand does
with a slave's updates: --per-call appends make one update call, and (unless --burst) the
call is "answered" only when store.written() fires, with at most MAX_IN_FLIGHT calls
unanswered — the slave's own flow control (bbx.pb.updates), so the queue stays bounded. Prints the rate from the first append to the
moment everything is committed (flush), and the file's size. The issue's target is >= 80 MB/s;
Buildbot stores about 8 MB/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from twisted.internet import defer, task

from bbx.master.store import Store
from bbx.pb.updates import FLUSH_BYTES, MAX_IN_FLIGHT, MAX_TEXT_CHARS

# A bbx slave's update call carries up to FLUSH_BYTES of output in pieces of at most
# MAX_TEXT_CHARS: that many 64 KiB appends per call by default. A slave leaves at most
# MAX_IN_FLIGHT calls unanswered before it pauses.
APPENDS_PER_CALL = max(1, FLUSH_BYTES // MAX_TEXT_CHARS)


async def bench(reactor, args, url=None):
    directory = args.dir or tempfile.mkdtemp(prefix="bbx-store-bench-")
    path = os.path.join(directory, "bench.sqlite")
    store = Store(url or path, reactor)
    await store.open()
    build_id, _number = await store.start_build(None, "bench", "local")
    step_id = await store.start_step(build_id, 1, "shell")
    line = "x" * 99 + "\n"
    chunk = (line * (args.chunk // len(line) + 1))[:args.chunk]
    total = args.mb * 1000 * 1000
    count = total // len(chunk)
    unanswered = []
    started = time.perf_counter()
    for i in range(count):
        store.append_log(step_id, "stdout" if i % 16 else "stderr", chunk)
        if i % args.per_call == args.per_call - 1:
            if not args.burst:
                unanswered.append(store.written())
                if len(unanswered) >= MAX_IN_FLIGHT:
                    await unanswered.pop(0)
            await task.deferLater(reactor, 0, lambda: None)
    appended = time.perf_counter()
    await store.flush()
    done = time.perf_counter()
    await store.finish_step(step_id, 0, 0)
    await store.finish_build(build_id, 0)
    info = await store.build(build_id)
    await store.close()
    stored = info["steps"][0]["log_bytes"]
    mb = stored / 1e6
    engine = "postgresql" if url else "sqlite"
    print(f"[{engine}] stored {mb:.1f} MB of log in {count} appends of {len(chunk)} bytes")
    print(f"[{engine}] appending took {appended - started:.2f} s on the reactor thread; "
          f"committed after {done - started:.2f} s")
    print(f"[{engine}] throughput: {mb / (done - started):.1f} MB/s into the store "
          "(target >= 80 MB/s SQLite, >= 100 MB/s PostgreSQL)")
    if url:
        return
    size = os.path.getsize(path)
    print(f"[{engine}] file: {path} ({size / 1e6:.1f} MB)")
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
        if not args.dir:
            os.rmdir(directory)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB of log to write")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per append")
    parser.add_argument("--dir", help="where to put the database (default: a temp dir)")
    parser.add_argument("--per-call", type=int, default=APPENDS_PER_CALL,
                        help="appends per simulated update call")
    parser.add_argument("--burst", action="store_true",
                        help="append without waiting for written() (unbounded queue)")
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    parser.add_argument("--engine", default="both", choices=("sqlite", "postgresql", "both"))
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start a server)")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if args.engine != "sqlite" and url is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from tests.postgres import PostgresServer, missing_reason

        reason = missing_reason()
        if reason:
            print(f"[postgresql] skipped: {reason}")
            if args.engine == "postgresql":
                return 0
            args.engine = "sqlite"
        else:
            server = PostgresServer.start(durable=True)
            url = server.new_database()

    async def both(reactor):
        if args.engine in ("sqlite", "both"):
            await bench(reactor, args)
        if args.engine in ("postgresql", "both"):
            await bench(reactor, args, url)

    try:
        task.react(lambda reactor: defer.ensureDeferred(both(reactor)))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
