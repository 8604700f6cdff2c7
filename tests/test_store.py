"""The build-history store: real SQLite files and a real PostgreSQL server, the real writer
thread, a real reactor.

Most tests are twisted.trial TestCases, which pytest runs natively (trial spins the global
reactor for each Deferred-returning test). Each TestCase class runs on SQLite, and again on
PostgreSQL as its `Pg...` twin (made at the bottom of this file), with a fresh database from
the session's server (tests/postgres.py). The kill tests run the store in child processes,
on both engines.
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

import pytest

from bbx.master import results
from bbx.master.results import (CANCELLED, EXCEPTION, FAILURE, RETRY, SKIPPED, SUCCESS,
                                WARNINGS, FailurePolicy)
from bbx.master.store import (SCHEMA_VERSION, NoSuchBuild, NoSuchStep, RequestNotQueued, Store,
                              StoreError)
from tests.support import Proc


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class StoreTestCase(unittest.TestCase):
    backend = "sqlite"
    pg_url = None

    def setUp(self):
        # Not trial's mktemp: under pytest it would create directories in the work tree.
        self.dir = Path(tempfile.mkdtemp(prefix="bbx-store-test-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "bbx.sqlite"
        self.db = self.path if self.backend == "sqlite" else self.pg_url
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def open_store(self, **kwargs):
        store = Store(self.db, reactor, **kwargs)
        yield store.open()
        self.addCleanup(store.close)
        return store

    def raw(self, query, args=()):
        """Rows of `query` (with ? placeholders) through a connection of the test's own."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                rows = conn.execute(query, args).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            cursor = conn.execute(query.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else []

    @defer.inlineCallbacks
    def fill_disk(self, store):
        """Make every log write fail as a full disk does, until free_disk()."""
        if self.backend == "sqlite":
            yield store.set_size_limit(0)  # SQLite keeps the file at its size: SQLITE_FULL
            return
        self.raw("CREATE OR REPLACE FUNCTION bbx_test_full() RETURNS trigger AS $$ BEGIN "
                 "RAISE EXCEPTION 'could not extend file: No space left on device' USING "
                 "ERRCODE = 'disk_full'; END $$ LANGUAGE plpgsql")
        self.raw("CREATE TRIGGER bbx_test_full BEFORE INSERT ON logs FOR EACH ROW "
                 "EXECUTE FUNCTION bbx_test_full()")

    @defer.inlineCallbacks
    def free_disk(self, store):
        if self.backend == "sqlite":
            yield store.set_size_limit(None)
            return
        self.raw("DROP TRIGGER bbx_test_full ON logs")

    @property
    def full_disk_message(self) -> str:
        return ("database or disk is full" if self.backend == "sqlite"
                else "No space left on device")

    def logged(self, level_name=None):
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "bbx.master.store"
                and (level_name is None or e["log_level"].name == level_name)]

    @defer.inlineCallbacks
    def build_with_step(self, store, builder="b", slave="s", step="shell"):
        build_id, _number = yield store.start_build(None, builder, slave)
        step_id = yield store.start_step(build_id, 1, step)
        return build_id, step_id


def sqlite_only(test):
    """A test of SQLite's own file handling: skipped in the PostgreSQL twin."""
    test.sqlite_only = True
    return test


class SchemaTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_a_new_store_gets_the_schema_and_its_version(self):
        store = yield self.open_store()
        yield store.close()
        version = self.raw("SELECT value FROM meta WHERE key = 'schema_version'")[0]
        if self.backend == "sqlite":
            tables = {r[0] for r in self.raw("SELECT name FROM sqlite_master WHERE type='table'")}
            self.assertEqual(self.raw("PRAGMA journal_mode")[0][0], "wal")
        else:
            tables = {r[0] for r in self.raw("SELECT tablename FROM pg_tables "
                                             "WHERE schemaname = current_schema()")}
        self.assertEqual(int(version[0]), SCHEMA_VERSION)
        self.assertTrue({"meta", "requests", "builds", "steps", "logs", "masters",
                         "slave_attachments", "builder_numbers"} <= tables)

    @sqlite_only
    @defer.inlineCallbacks
    def test_a_version_1_file_is_migrated_and_keeps_its_history(self):
        from bbx.master.store_schema import script

        conn = sqlite3.connect(self.path)
        conn.executescript(script(0, "sqlite") + ";INSERT INTO meta VALUES ('schema_version', '1');"
                           "INSERT INTO requests (builder, submitted_at) VALUES ('a', 1.0);"
                           "INSERT INTO builds (request_id, builder, number, started_at, "
                           "finished_at, result, state) VALUES (1, 'a', 7, 1.0, 2.0, 0, 'finished');")
        conn.close()
        store = yield self.open_store()
        old = yield store.build(1)
        new_id, number = yield store.start_build(None, "a", "s1")
        self.assertEqual((old["number"], old["result_name"]), (7, "success"))
        self.assertEqual(number, 8)
        self.assertTrue(any("migrated" in line and "from schema version 1" in line
                            for line in self.logged("info")))

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
        self.raw("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.raw("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
        before = digest(self.path) if self.backend == "sqlite" else None
        error = yield self.assertFailure(Store(self.db, reactor).open(), StoreError)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(str(self.path) if self.backend == "sqlite" else "postgresql://", message)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", message)
        if self.backend == "sqlite":
            self.assertEqual(digest(self.path), before)
            self.assertEqual(sorted(os.listdir(self.dir)), ["bbx.sqlite"])
        self.assertEqual(self.raw("SELECT key, value FROM meta"),
                         [("schema_version", str(SCHEMA_VERSION + 1))])

    @sqlite_only
    @defer.inlineCallbacks
    def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(self):
        self.path.write_bytes(os.urandom(64 * 1024))
        before = digest(self.path)
        error = yield self.assertFailure(Store(self.path, reactor).open(), StoreError)
        self.assertNotIn("\n", str(error))
        self.assertIn("not a SQLite database", str(error))
        self.assertEqual(digest(self.path), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["bbx.sqlite"])

    @sqlite_only
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
    def test_another_programs_database_is_refused(self):
        self.raw("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        before = digest(self.path) if self.backend == "sqlite" else None
        error = yield self.assertFailure(Store(self.db, reactor).open(), StoreError)
        self.assertIn("not a bbx store", str(error))
        if self.backend == "sqlite":
            self.assertEqual(digest(self.path), before)
        self.assertEqual(self.raw("SELECT COUNT(*) FROM photos"), [(0,)])


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
    def test_a_build_can_start_with_its_first_step_in_one_transaction(self):
        store = yield self.open_store()
        build_id, number, step_id = yield store.start_build(None, "b", "s", first_step="compile")
        store.append_log(step_id, "stdout", "compiled\n")
        yield store.finish_step(step_id, 0, 0)
        second = yield store.start_step(build_id, 2, "test")
        steps = (yield store.build(build_id))["steps"]
        self.assertEqual(number, 1)
        self.assertEqual([(s["number"], s["name"]) for s in steps], [(1, "compile"), (2, "test")])
        self.assertEqual([(s, t) for _q, s, t in (yield store.log(build_id, "compile"))],
                         [("stdout", "compiled\n")])
        self.assertNotEqual(second, step_id)

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
        data = bytes(self.raw("SELECT data FROM logs")[0][0])
        rows = yield store.log(build_id)
        self.assertEqual(data, b"caf\xe9\n")
        self.assertEqual(rows[0][2], "caf\ufffd\n")

    @defer.inlineCallbacks
    def test_sql_never_runs_on_the_reactor_thread(self):
        store = yield self.open_store()
        threads = set()
        if self.backend == "sqlite":  # every statement, even those the store does not build
            store._db.conn.set_trace_callback(lambda _sql: threads.add(threading.get_ident()))
        else:
            store._db.trace = lambda _sql: threads.add(threading.get_ident())
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
        self.assertEqual(self.raw("SELECT COUNT(*) FROM logs")[0][0], 1)

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
        yield self.fill_disk(store)
        text = [f"{i:06d}" + "y" * 4000 + "\n" for i in range(100)]
        for chunk in text:
            store.append_log(step_id, "stdout", chunk)
        yield self.assertFailure(store.flush(), StoreError)
        errors = self.logged("error")
        listed = yield store.builds()  # reads are still served
        store.append_log(step_id, "stderr", "after\n")  # and appends still accepted
        yield self.free_disk(store)
        yield store.flush()
        rows = yield store.log(build_id)
        self.assertEqual(len(errors), 1)
        self.assertIn(str(self.path) if self.backend == "sqlite" else "postgresql://", errors[0])
        self.assertIn(self.full_disk_message, errors[0])
        self.assertIn(f"build {build_id}", errors[0])
        self.assertEqual([b["id"] for b in listed], [build_id])
        self.assertEqual("".join(t for _q, _s, t in rows), "".join(text) + "after\n")
        self.assertEqual(rows[-1][1], "stderr")
        self.assertTrue(any("again" in line for line in self.logged("info")))

    @defer.inlineCallbacks
    def test_a_full_disk_is_retried_without_new_appends(self):
        store = yield self.open_store(retry_interval=0.05)
        build_id, step_id = yield self.build_with_step(store)
        yield self.fill_disk(store)
        store.append_log(step_id, "stdout", "z" * 200_000)
        yield self.assertFailure(store.flush(), StoreError)
        yield self.free_disk(store)
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
        yield self.fill_disk(store)
        for i in range(10):
            store.append_log(step_id, "stdout", f"{i}" * 60_000)
            yield self.assertFailure(store.flush(), StoreError)
        yield self.free_disk(store)
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


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """A store location on each engine in turn: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "bbx.sqlite"
    return request.getfixturevalue("pg_url")


def test_sigkill_loses_nothing_that_was_flushed_and_the_build_is_interrupted(tmp_path, any_db):
    script = write_child(tmp_path)
    db = any_db
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


def test_sigterm_stops_cleanly_with_every_append_stored(tmp_path, any_db):
    script = write_child(tmp_path)
    db = any_db
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


# -- the same tests on PostgreSQL -----------------------------------------------------------

class _OnPostgres:
    """Mixed into each TestCase class above to make its PostgreSQL twin."""

    backend = "postgresql"

    @pytest.fixture(autouse=True)
    def _database(self, request):
        if getattr(getattr(self, self._testMethodName), "sqlite_only", False):
            pytest.skip("a test of SQLite's own file handling")
        self.pg_url = request.getfixturevalue("pg_url")


for _case in (SchemaTests, LogTests, LookupTests, RequestTests, DiskFullTests):
    globals()["Pg" + _case.__name__] = type("Pg" + _case.__name__, (_OnPostgres, _case), {})
del _case
