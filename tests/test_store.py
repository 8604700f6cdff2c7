"""The build-history store: real SQLite files, the real writer thread, a real reactor.

Most tests are twisted.trial TestCases, which pytest runs natively (trial spins the global
reactor for each Deferred-returning test). The kill tests run the store in child processes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from bbx.master import results
from bbx.master.results import (CANCELLED, EXCEPTION, FAILURE, RETRY, SKIPPED, SUCCESS,
                                WARNINGS, FailurePolicy)
from bbx.master.store import (SCHEMA_VERSION, NoSuchBuild, NoSuchStep, RequestNotQueued, Store,
                              StoreError)
from tests.support import Proc


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        # Not trial's mktemp: under pytest it would create directories in the work tree.
        self.dir = Path(tempfile.mkdtemp(prefix="bbx-store-test-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "bbx.sqlite"
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def open_store(self, **kwargs):
        store = Store(self.path, reactor, **kwargs)
        yield store.open()
        self.addCleanup(store.close)
        return store

    def logged(self, level_name=None):
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "bbx.master.store"
                and (level_name is None or e["log_level"].name == level_name)]

    @defer.inlineCallbacks
    def build_with_step(self, store, builder="b", slave="s", step="shell"):
        build_id, _number = yield store.start_build(None, builder, slave)
        step_id = yield store.start_step(build_id, 1, step)
        return build_id, step_id


class SchemaTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_a_new_file_gets_the_schema_its_version_and_wal(self):
        store = yield self.open_store()
        yield store.close()
        conn = sqlite3.connect(self.path)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        self.assertEqual(int(version[0]), SCHEMA_VERSION)
        self.assertTrue({"meta", "requests", "builds", "steps", "logs"} <= tables)
        self.assertEqual(mode, "wal")

    @defer.inlineCallbacks
    def test_reopening_keeps_builds_steps_and_logs(self):
        store = yield self.open_store()
        build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", "kept\n")
        yield store.finish_step(step_id, SUCCESS, 0)
        yield store.finish_build(build_id, SUCCESS)
        yield store.close()
        again = yield self.open_store()
        build = yield again.build(build_id)
        lines = yield again.log(build_id)
        self.assertEqual((build["result"], build["steps"][0]["rc"]), (SUCCESS, 0))
        self.assertEqual([text for _seq, _stream, text in lines], ["kept\n"])

    @defer.inlineCallbacks
    def test_a_newer_schema_is_refused_in_one_line_and_left_untouched(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
        conn.commit()
        conn.close()
        before = digest(self.path)
        error = yield self.assertFailure(Store(self.path, reactor).open(), StoreError)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(str(self.path), message)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", message)
        self.assertEqual(digest(self.path), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["bbx.sqlite"])

    @defer.inlineCallbacks
    def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(self):
        self.path.write_bytes(os.urandom(64 * 1024))
        before = digest(self.path)
        error = yield self.assertFailure(Store(self.path, reactor).open(), StoreError)
        self.assertNotIn("\n", str(error))
        self.assertIn("not a SQLite database", str(error))
        self.assertEqual(digest(self.path), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["bbx.sqlite"])

    @defer.inlineCallbacks
    def test_a_damaged_store_is_refused_as_corrupt_and_left_untouched(self):
        store = yield self.open_store()
        _build_id, step_id = yield self.build_with_step(store)
        for i in range(64):
            store.append_log(step_id, "stdout", f"{i:04d}" * 4096)
        yield store.close()
        page = 16384
        data = bytearray(self.path.read_bytes())
        for offset in range(2 * page, len(data), page):  # leave page 1 (header, schema) alone
            data[offset:offset + 64] = os.urandom(64)
        self.path.write_bytes(bytes(data))
        before = digest(self.path)
        error = yield self.assertFailure(Store(self.path, reactor).open(), StoreError)
        self.assertNotIn("\n", str(error))
        self.assertIn("corrupt", str(error))
        self.assertEqual(digest(self.path), before)

    @defer.inlineCallbacks
    def test_another_programs_sqlite_database_is_refused(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
        before = digest(self.path)
        error = yield self.assertFailure(Store(self.path, reactor).open(), StoreError)
        self.assertIn("not a bbx store", str(error))
        self.assertEqual(digest(self.path), before)


class LogTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_log_chunks_come_back_in_order_with_their_streams(self):
        store = yield self.open_store()
        build_id, first = yield self.build_with_step(store, step="compile")
        sent = []
        streams = itertools.cycle(["header", "stdout", "stdout", "stderr", "log:config.log"])
        for i in range(300):
            stream = next(streams)
            store.append_log(first, stream, f"{stream} {i}\n")
            sent.append((stream, f"{stream} {i}\n"))
        second = yield store.start_step(build_id, 2, "test")
        store.append_log(second, "stdout", "second step\n")
        whole = yield store.log(build_id)
        only_first = yield store.log(build_id, "compile")
        only_second = yield store.log(build_id, 2)

        self.assertEqual(merged((s, t) for _q, s, t in only_first), merged(sent))
        self.assertEqual([(s, t) for _q, s, t in only_second], [("stdout", "second step\n")])
        self.assertEqual(whole, only_first + only_second)
        seqs = [seq for seq, _s, _t in whole]
        self.assertEqual(seqs, sorted(set(seqs)))

    @defer.inlineCallbacks
    def test_follow_reads_only_what_came_after_the_last_seq(self):
        store = yield self.open_store()
        build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", "one\n")
        seen = yield store.log(build_id)
        store.append_log(step_id, "stderr", "two\n")
        more = yield store.log(build_id, after_seq=seen[-1][0])
        self.assertEqual([(s, t) for _q, s, t in more], [("stderr", "two\n")])

    @defer.inlineCallbacks
    def test_small_appends_are_merged_into_few_rows_without_changing_the_text(self):
        store = yield self.open_store()
        build_id, step_id = yield self.build_with_step(store)
        for i in range(2000):
            store.append_log(step_id, "stdout", f"line {i}\n")
        rows = yield store.log(build_id)
        self.assertLess(len(rows), 20)
        self.assertEqual("".join(t for _q, _s, t in rows),
                         "".join(f"line {i}\n" for i in range(2000)))

    @defer.inlineCallbacks
    def test_log_pages_stop_at_max_bytes(self):
        store = yield self.open_store()
        build_id, step_id = yield self.build_with_step(store)
        for i in range(4):
            store.append_log(step_id, "stdout" if i % 2 else "stderr", "x" * 1000)
        page = yield store.log(build_id, max_bytes=1500)
        self.assertEqual(len(page), 2)

    @defer.inlineCallbacks
    def test_text_that_is_not_utf8_keeps_its_bytes(self):
        store = yield self.open_store()
        build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", b"caf\xe9\n".decode("utf-8", "surrogateescape"))
        yield store.flush()
        conn = sqlite3.connect(self.path)
        data = conn.execute("SELECT data FROM logs").fetchone()[0]
        conn.close()
        rows = yield store.log(build_id)
        self.assertEqual(data, b"caf\xe9\n")
        self.assertEqual(rows[0][2], "caf\ufffd\n")

    @defer.inlineCallbacks
    def test_sqlite_never_runs_on_the_reactor_thread(self):
        store = yield self.open_store()
        threads = set()
        store._db.conn.set_trace_callback(lambda _sql: threads.add(threading.get_ident()))
        build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", "x")
        yield store.flush()
        yield store.builds()
        yield store.log(build_id)
        self.assertTrue(threads)
        self.assertNotIn(threading.get_ident(), threads)

    @defer.inlineCallbacks
    def test_written_fires_once_the_batch_is_committed(self):
        store = yield self.open_store(flush_interval=0.05)
        _build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", "soon\n")
        yield store.written()
        conn = sqlite3.connect(self.path)
        count = conn.execute("SELECT COUNT(*) FROM logs").fetchone()[0]
        conn.close()
        self.assertEqual(count, 1)

    @defer.inlineCallbacks
    def test_close_commits_what_was_queued(self):
        store = yield self.open_store(flush_interval=60)
        build_id, step_id = yield self.build_with_step(store)
        store.append_log(step_id, "stdout", "last words\n")
        yield store.close()
        again = yield self.open_store()
        rows = yield again.log(build_id)
        self.assertEqual([t for _q, _s, t in rows], ["last words\n"])


class LookupTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_an_unknown_build_id_is_one_clear_line(self):
        store = yield self.open_store()
        for call in (store.build(4242), store.log(4242), store.start_step(4242, 1, "x")):
            error = yield self.assertFailure(call, NoSuchBuild)
            self.assertNotIn("\n", str(error))
            self.assertIn("4242", str(error))
            self.assertIn("bbx builds", str(error))

    @defer.inlineCallbacks
    def test_an_unknown_step_names_the_steps_there_are(self):
        store = yield self.open_store()
        build_id, _step = yield self.build_with_step(store, step="compile")
        error = yield self.assertFailure(store.log(build_id, "deploy"), NoSuchStep)
        self.assertIn("'deploy'", str(error))
        self.assertIn("1 compile", str(error))

    @defer.inlineCallbacks
    def test_builds_are_listed_newest_first_per_builder_and_limited(self):
        store = yield self.open_store()
        started = []
        for builder in ["a", "b", "a", "a", "b"]:
            build_id, number = yield store.start_build(None, builder, "s1")
            started.append((build_id, builder, number))
        yield store.finish_build(started[0][0], FAILURE)
        everything = yield store.builds()
        only_a = yield store.builds("a", limit=2)
        self.assertEqual([b["id"] for b in everything], [b[0] for b in reversed(started)])
        self.assertEqual([(b["builder"], b["number"]) for b in only_a], [("a", 3), ("a", 2)])
        self.assertEqual((everything[-1]["result_name"], everything[0]["result_name"]),
                         ("failure", "running"))
        self.assertIsNone(everything[0]["duration"])
        self.assertGreaterEqual(everything[-1]["duration"], 0)


class RequestTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_requests_queue_in_order_and_are_claimed_once(self):
        store = yield self.open_store()
        first = yield store.queue_request("a", "first")
        second = yield store.queue_request("a", "second")
        yield store.queue_request("b", "other builder")
        queued = yield store.pending_requests("a")
        build_id, _n = yield store.start_build(first, "a", "s1")
        yield self.assertFailure(store.start_build(first, "a", "s2"), RequestNotQueued)
        left = yield store.pending_requests("a")
        build = yield store.build(build_id)
        self.assertEqual([r["id"] for r in queued], [first, second])
        self.assertEqual([r["id"] for r in left], [second])
        self.assertEqual((build["request_id"], build["reason"]), (first, "first"))

    @defer.inlineCallbacks
    def test_a_requeued_request_is_pending_again_and_a_finished_one_is_not(self):
        store = yield self.open_store()
        request = yield store.queue_request("a")
        yield store.start_build(request, "a", "s1")
        yield store.requeue_request(request)
        again = yield store.pending_requests()
        yield store.start_build(request, "a", "s1")
        yield store.finish_request(request)
        gone = yield store.pending_requests()
        self.assertEqual([(r["id"], r["retries"]) for r in again], [(request, 1)])
        self.assertEqual(gone, [])

    @defer.inlineCallbacks
    def test_builds_cut_off_by_a_stop_are_marked_interrupted_and_requeued(self):
        store = yield self.open_store()
        request = yield store.queue_request("a", "nightly")
        build_id, _n = yield store.start_build(request, "a", "s1")
        step_id = yield store.start_step(build_id, 1, "shell")
        store.append_log(step_id, "stdout", "half way\n")
        done_id, _n = yield store.start_build(None, "a", "s1")
        yield store.finish_build(done_id, SUCCESS)
        yield store.close()
        again = yield self.open_store()
        marked = yield again.mark_interrupted("the master stopped")
        build = yield again.build(build_id)
        pending = yield again.pending_requests()
        rows = yield again.log(build_id)
        self.assertEqual(marked, [build_id])
        self.assertEqual((build["state"], build["result"], build["interrupted_reason"]),
                         ("interrupted", RETRY, "the master stopped"))
        self.assertEqual(build["steps"][0]["result"], RETRY)
        self.assertIsNotNone(build["finished_at"])
        self.assertEqual([(r["id"], r["retries"]) for r in pending], [(request, 1)])
        self.assertEqual([t for _q, _s, t in rows], ["half way\n"])

    @defer.inlineCallbacks
    def test_without_requeue_an_interrupted_build_is_an_exception_and_its_request_done(self):
        store = yield self.open_store()
        request = yield store.queue_request("a")
        build_id, _n = yield store.start_build(request, "a", "s1")
        yield store.mark_interrupted("stopped", requeue=False)
        build = yield store.build(build_id)
        pending = yield store.pending_requests()
        self.assertEqual((build["state"], build["result"]), ("interrupted", EXCEPTION))
        self.assertEqual(pending, [])


class DiskFullTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_a_full_disk_is_logged_the_master_keeps_serving_and_the_log_is_saved_later(self):
        store = yield self.open_store(retry_interval=0.05)
        build_id, step_id = yield self.build_with_step(store)
        yield store.set_size_limit(0)  # SQLite keeps the file at its current size: SQLITE_FULL
        text = [f"{i:06d}" + "y" * 4000 + "\n" for i in range(100)]
        for chunk in text:
            store.append_log(step_id, "stdout", chunk)
        yield self.assertFailure(store.flush(), StoreError)
        errors = self.logged("error")
        listed = yield store.builds()  # reads are still served
        store.append_log(step_id, "stderr", "after\n")  # and appends still accepted
        yield store.set_size_limit(None)
        yield store.flush()
        rows = yield store.log(build_id)
        self.assertEqual(len(errors), 1)
        self.assertIn(str(self.path), errors[0])
        self.assertIn("database or disk is full", errors[0])
        self.assertIn(f"build {build_id}", errors[0])
        self.assertEqual([b["id"] for b in listed], [build_id])
        self.assertEqual("".join(t for _q, _s, t in rows), "".join(text) + "after\n")
        self.assertEqual(rows[-1][1], "stderr")
        self.assertTrue(any("again" in line for line in self.logged("info")))

    @defer.inlineCallbacks
    def test_a_full_disk_is_retried_without_new_appends(self):
        store = yield self.open_store(retry_interval=0.05)
        build_id, step_id = yield self.build_with_step(store)
        yield store.set_size_limit(0)
        store.append_log(step_id, "stdout", "z" * 200_000)
        yield self.assertFailure(store.flush(), StoreError)
        yield store.set_size_limit(None)
        deadline = time.monotonic() + 10
        while True:
            rows = yield store.log(build_id)
            if rows or time.monotonic() > deadline:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual("".join(t for _q, _s, t in rows), "z" * 200_000)

    @defer.inlineCallbacks
    def test_past_the_memory_cap_the_oldest_log_is_dropped_and_marked(self):
        store = yield self.open_store(retry_interval=0.05, max_held_bytes=100_000)
        build_id, step_id = yield self.build_with_step(store)
        yield store.set_size_limit(0)
        for i in range(10):
            store.append_log(step_id, "stdout", f"{i}" * 60_000)
            yield self.assertFailure(store.flush(), StoreError)
        yield store.set_size_limit(None)
        yield store.flush()
        rows = yield store.log(build_id)
        text = "".join(t for _q, _s, t in rows)
        self.assertTrue(rows[0][2].startswith("\n[bbx: "))
        self.assertIn("bytes of log were lost", rows[0][2])
        self.assertTrue(text.endswith("9" * 60_000))
        self.assertNotIn("0" * 60_000, text)
        self.assertTrue(any("dropped" in line for line in self.logged("error")))


class ResultTests(unittest.SynchronousTestCase):
    def test_numbers_and_names_are_buildbots(self):
        from buildbot.process import results as bb
        self.assertEqual(
            (SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED),
            (bb.SUCCESS, bb.WARNINGS, bb.FAILURE, bb.SKIPPED, bb.EXCEPTION, bb.RETRY,
             bb.CANCELLED))
        self.assertEqual([results.name(r) for r in results.ALL_RESULTS], bb.Results)
        self.assertEqual(results.name(None), "not finished")
        self.assertEqual(results.from_name("FAILURE"), FAILURE)

    def test_worst_of_matches_buildbot_for_every_pair(self):
        from buildbot.process.results import worst_status
        choices = [None, *results.ALL_RESULTS]
        for a, b in itertools.product(choices, choices):
            self.assertEqual(results.worst_of(a, b), worst_status(a, b), (a, b))

    def test_combine_matches_buildbot_for_every_policy(self):
        from buildbot.process.results import computeResultAndTermination

        class Step:
            pass
        for flags in itertools.product([False, True], repeat=5):
            policy = FailurePolicy(*flags)
            step = Step()
            (step.haltOnFailure, step.flunkOnWarnings, step.flunkOnFailure,
             step.warnOnWarnings, step.warnOnFailure) = flags
            for previous, result in itertools.product(results.ALL_RESULTS, repeat=2):
                self.assertEqual(results.combine(previous, result, policy),
                                 computeResultAndTermination(step, result, previous),
                                 (flags, previous, result))

    def test_step_result_judges_a_command_as_buildbot_does(self):
        self.assertEqual(results.step_result(0), SUCCESS)
        self.assertEqual(results.step_result(1), FAILURE)
        self.assertEqual(results.step_result(None), FAILURE)
        self.assertEqual(results.step_result(1, decode_rc={0: SUCCESS, 1: WARNINGS}), WARNINGS)
        self.assertEqual(results.step_result(0, interrupted=True), CANCELLED)
        self.assertEqual(results.step_result(None, failure="could not run"), EXCEPTION)
        self.assertEqual(results.step_result(None, interrupted=True, lost=True), RETRY)
        self.assertEqual(results.from_completion(
            {"rc": None, "failure": "lost the connection to slave x", "interrupted": False,
             "lost": True}), RETRY)


# -- the master process dies: children that use the store, killed for real ------------------

CHILD = r'''
import json, sys
from twisted.internet import defer, task
from bbx.master.store import Store

async def write(reactor, path, flush_every):
    # As the master's own stopService would: stop taking in log text before the store's
    # shutdown trigger closes it (triggers fire in the order they were added).
    stopping = []
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
    store = Store(path, reactor)
    await store.open()
    request = await store.queue_request("a", "killed")
    build_id, _n = await store.start_build(request, "a", "s1")
    step_id = await store.start_step(build_id, 1, "shell")
    print(json.dumps({"build": build_id, "request": request}), flush=True)
    i = 0
    while not stopping:
        store.append_log(step_id, "stdout" if i % 3 else "stderr", f"chunk {i} " + "x" * 3000 + "\n")
        if flush_every and i % flush_every == 0:
            await store.flush()
            print(f"flushed {i}", flush=True)
        elif not flush_every:
            print(f"appended {i}", flush=True)
            await task.deferLater(reactor, 0.001, lambda: None)
        i += 1

async def reopen(reactor, path):
    store = Store(path, reactor)
    await store.open()
    marked = await store.mark_interrupted("the master was stopped")
    builds = await store.builds()
    pending = await store.pending_requests()
    rows = await store.log(builds[0]["id"])
    await store.close()
    print(json.dumps({"marked": marked, "build": builds[0], "pending": pending,
                      "rows": [[s, t] for _q, s, t in rows]}))

mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    task.react(lambda r: defer.ensureDeferred(write(r, path, int(sys.argv[3]))))
else:
    task.react(lambda r: defer.ensureDeferred(reopen(r, path)))
'''


def write_child(tmp_path) -> Path:
    script = tmp_path / "store_child.py"
    script.write_text(CHILD)
    return script


def reopen_in_child(script, db) -> dict:
    done = subprocess.run([sys.executable, str(script), "reopen", str(db)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def numbers(lines: str, word: str) -> list[int]:
    return [int(line.split()[1]) for line in lines.splitlines() if line.startswith(word + " ")]


def expected_rows(count: int) -> list[list[str]]:
    return [["stdout" if i % 3 else "stderr", f"chunk {i} " + "x" * 3000 + "\n"]
            for i in range(count)]


def merged(rows) -> list[tuple[str, str]]:
    """Join consecutive rows of one stream: the store may merge appends into chunks."""
    out: list[tuple[str, str]] = []
    for stream, text in rows:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + text)
        else:
            out.append((stream, text))
    return out


def test_sigkill_loses_nothing_that_was_flushed_and_the_build_is_interrupted(tmp_path):
    script = write_child(tmp_path)
    db = tmp_path / "bbx.sqlite"
    child = Proc([sys.executable, script, "write", db, "7"], cwd=Path(__file__).parent.parent,
                 log_path=tmp_path / "child.log")
    try:
        child.wait_for_output("flushed 70\n", timeout=60)
        os.killpg(child.pid, signal.SIGKILL)
        child.popen.wait(10)
    finally:
        child.kill()
    first = json.loads(child.output().splitlines()[0])
    last_flushed = numbers(child.output(), "flushed")[-1]
    after = reopen_in_child(script, db)
    stored = merged(after["rows"])
    expected = merged(expected_rows(last_flushed + 1))
    assert stored[:len(expected) - 1] == expected[:-1]
    assert stored[len(expected) - 1][1].startswith(expected[-1][1])
    assert after["marked"] == [first["build"]]
    assert (after["build"]["state"], after["build"]["result"]) == ("interrupted", RETRY)
    assert [r["id"] for r in after["pending"]] == [first["request"]]


def test_sigterm_stops_cleanly_with_every_append_stored(tmp_path):
    script = write_child(tmp_path)
    db = tmp_path / "bbx.sqlite"
    child = Proc([sys.executable, script, "write", db, "0"], cwd=Path(__file__).parent.parent,
                 log_path=tmp_path / "child.log")
    try:
        child.wait_for_output("appended 50\n", timeout=60)
        os.killpg(child.pid, signal.SIGTERM)
        child.popen.wait(20)
    finally:
        child.kill()
    assert child.popen.returncode == 0, child.output()[-2000:]
    appended = numbers(child.output(), "appended")[-1]
    after = reopen_in_child(script, db)
    stored = merged(after["rows"])
    assert stored[:len(merged(expected_rows(appended + 1)))] == merged(expected_rows(appended + 1))
    assert after["build"]["state"] == "interrupted"
