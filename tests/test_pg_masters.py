"""Several masters' bookkeeping on a real PostgreSQL server, in process: claiming with row
locks, NOTIFY between stores, heartbeats and the reaping of a dead master (on a task.Clock),
and that a SQLite master never loads psycopg.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bbx.master import store_location
from bbx.master.masters import MasterRegistry
from bbx.master.results import RETRY
from bbx.master.store import Store
from bbx.master.store_listen import NameTaken
from tests.support import wait_until


class _Link:
    def __init__(self, since):
        self.connected_since = since


class _Slave:
    def __init__(self, link=None):
        self.link = link


class SharedStoreTestCase(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _database(self, request):
        self.url = request.getfixturevalue("pg_url")

    @defer.inlineCallbacks
    def store(self, master):
        store = Store(self.url, reactor, master=master)
        yield store.open()
        self.addCleanup(store.close)
        return store


class ClaimTests(SharedStoreTestCase):
    @defer.inlineCallbacks
    def test_two_masters_claiming_at_once_never_claim_the_same_request(self):
        a = yield self.store("a")
        b = yield self.store("b")
        queued = []
        for i in range(40):
            request = yield a.queue_request("x", f"r{i}")
            queued.append(request)
        claims = {"a": [], "b": []}

        @defer.inlineCallbacks
        def claim_all(store):
            while True:
                request = yield store.claim_request(["x"])
                if request is None:
                    return
                claims[store.master].append(request["id"])
        yield defer.gatherResults([claim_all(a), claim_all(b), claim_all(a), claim_all(b)])
        together = claims["a"] + claims["b"]
        # Every request claimed, none twice (which master got how many is the scheduler's
        # business; the spread over masters is tested with real masters in test_pg_farm.py).
        self.assertEqual(sorted(together), queued)

    @defer.inlineCallbacks
    def test_a_claim_becomes_that_masters_build_or_goes_back(self):
        a = yield self.store("a")
        b = yield self.store("b")
        first = yield a.queue_request("x")
        second = yield a.queue_request("x")
        claimed = yield a.claim_request(["x"])
        self.assertEqual(claimed["id"], first)
        yield self.assertFailure(b.start_build(first, "x", "s2"), Exception)
        build_id, number = yield a.start_build(first, "x", "s1")
        other = yield b.claim_request(["x"])
        gave_back = yield b.unclaim_request(other["id"])
        pending = yield a.pending_requests()
        build = yield b.build(build_id)
        self.assertEqual((other["id"], gave_back), (second, True))
        self.assertEqual([r["id"] for r in pending], [second])
        self.assertEqual((build["master"], number), ("a", 1))

    @defer.inlineCallbacks
    def test_build_numbers_never_collide_between_masters(self):
        a = yield self.store("a")
        b = yield self.store("b")
        started = yield defer.gatherResults(
            [(a if i % 2 else b).start_build(None, "x", "s") for i in range(30)])
        self.assertEqual(sorted(n for _id, n in started), list(range(1, 31)))


class EventTests(SharedStoreTestCase):
    @defer.inlineCallbacks
    def test_one_masters_commits_reach_the_other_by_notify(self):
        a = yield self.store("a")
        b = yield self.store("b")
        heard = []
        b.events.subscribe("request", lambda sender, rid, *x: heard.append(("request", sender, rid)))
        b.events.subscribe("log", lambda sender, build, *x: heard.append(("log", sender, build)))
        request = yield a.queue_request("x")
        build_id, _n = yield a.start_build(None, "x", "s")
        step = yield a.start_step(build_id, 1, "s")
        a.append_log(step, "stdout", "hello\n")
        yield a.flush()
        while len(heard) < 2:
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertIn(("request", "a", request), heard)
        self.assertIn(("log", "a", build_id), heard)

    @defer.inlineCallbacks
    def test_a_second_master_with_the_same_name_is_refused(self):
        yield self.store("a")
        error = yield self.assertFailure(Store(self.url, reactor, master="a").open(), NameTaken)
        self.assertIn("another master named 'a'", str(error))
        self.assertNotIn("\n", str(error))

    @defer.inlineCallbacks
    def test_a_log_wait_wakes_on_the_other_masters_rows(self):
        a = yield self.store("a")
        b = yield self.store("b")
        build_id, _n = yield a.start_build(None, "x", "s")
        step = yield a.start_step(build_id, 1, "s")
        woken = b.events.wait(reactor, 10, {"log": lambda _s, bid, *x: bid == build_id})
        a.append_log(step, "stdout", "wake\n")
        event = yield woken
        self.assertEqual(event[:3], ("log", "a", build_id))


class HeartbeatTests(SharedStoreTestCase):
    @defer.inlineCallbacks
    def test_a_silent_master_is_declared_dead_within_the_deadline_and_its_builds_retried(self):
        a_store = yield self.store("a")
        b_store = yield self.store("b")
        a_clock, b_clock = task.Clock(), task.Clock()
        a = MasterRegistry(a_store, a_clock, "a", 30.0, {})
        b = MasterRegistry(b_store, b_clock, "b", 30.0, {})
        yield a.start()
        yield b.start()
        self.addCleanup(lambda: a._loop and a._loop.running and a._loop.stop())
        self.addCleanup(lambda: b._loop and b._loop.running and b._loop.stop())
        request = yield b_store.queue_request("x")
        claimed = yield b_store.claim_request(["x"])
        build_id, _n = yield b_store.start_build(claimed["id"], "x", "s")
        yield a.beat()  # a first sees b
        yield b.beat()  # b beats once more, then dies (its clock stops)
        died = 0.0
        declared = None
        for second in range(1, 40):
            a_clock.advance(1)
            yield a.beat()
            masters = yield a.listing()
            if {m["name"]: m["state"] for m in masters}["b"] == "dead":
                declared = second - died
                break
        self.assertIsNotNone(declared)
        self.assertLessEqual(declared, 30.0)
        self.assertGreaterEqual(declared, a.threshold)
        build = yield a_store.build(build_id)
        pending = yield a_store.pending_requests()
        self.assertEqual((build["state"], build["result"]), ("interrupted", RETRY))
        self.assertIn("master b stopped heartbeating", build["interrupted_reason"])
        self.assertEqual([(r["id"], r["retries"]) for r in pending], [(request, 1)])

    @defer.inlineCallbacks
    def test_a_beating_master_is_never_declared_dead(self):
        a_store = yield self.store("a")
        b_store = yield self.store("b")
        clock = task.Clock()
        a = MasterRegistry(a_store, clock, "a", 30.0, {})
        b = MasterRegistry(b_store, clock, "b", 30.0, {})
        yield a.start()
        yield b.start()
        for _ in range(60):
            clock.advance(a.interval)
            yield b.beat()
            yield a.beat()
        listing = yield a.listing()
        self.assertEqual({m["name"]: m["state"] for m in listing}, {"a": "active", "b": "active"})
        a._loop.stop()
        b._loop.stop()

    @defer.inlineCallbacks
    def test_a_master_declared_dead_while_alive_gives_up_its_builds_and_registers_again(self):
        import psycopg

        store = yield self.store("a")
        told = []
        a = MasterRegistry(store, task.Clock(), "a", 30.0, {}, on_declared_dead=told.append)
        yield a.start()
        self.addCleanup(lambda: a._loop.running and a._loop.stop())
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE masters SET state = 'dead', stopped_reason = 'silent' "
                         "WHERE name = 'a'")
        yield a.beat()
        yield a.beat()
        listing = yield a.listing()
        self.assertEqual(len(told), 1)
        self.assertIn("declared dead (silent)", told[0])
        self.assertEqual([(m["name"], m["state"]) for m in listing], [("a", "active")])

    @defer.inlineCallbacks
    def test_attachments_are_recorded_with_the_beat_and_shown_to_other_masters(self):
        from bbx.master import store_masters

        a_store = yield self.store("a")
        b_store = yield self.store("b")
        slaves = {"s1": _Slave(_Link(100.0)), "s2": _Slave()}
        clock = task.Clock()
        b = MasterRegistry(b_store, clock, "b", 30.0, slaves)
        yield b.start()
        self.addCleanup(lambda: b._loop.running and b._loop.stop())
        before = yield a_store.run_query(store_masters.attachments, write=False)
        yield b.beat()
        seen = yield a_store.run_query(store_masters.attachments, write=False)
        slaves["s1"].link = None
        slaves["s2"].link = _Link(200.0)
        yield b.beat()
        later = yield a_store.run_query(store_masters.attachments, write=False)
        self.assertEqual(before, {})
        self.assertEqual(seen, {"s1": ("b", 100.0)})
        self.assertEqual(later, {"s2": ("b", 200.0)})


def test_the_db_setting_takes_paths_sqlite_urls_and_postgresql_urls(tmp_path):
    parse = store_location.parse
    assert parse("bbx.sqlite", tmp_path).path == tmp_path / "bbx.sqlite"
    assert parse("sqlite:h/x.db", tmp_path).path == tmp_path / "h" / "x.db"
    assert parse("sqlite:///abs/x.db", tmp_path).path == Path("/abs/x.db")
    pg = parse("postgresql://u:secret@db.example.org:5433/bbx", tmp_path)
    assert (pg.engine, pg.shared) == ("postgresql", True)
    assert pg.display() == "postgresql://u:***@db.example.org:5433/bbx"
    assert parse("postgresql:///bbx?host=/run/postgresql").url.endswith("host=/run/postgresql")
    for bad, words in (("mysql://x/y", "unknown scheme"), ("postgresql://host", "names no database"),
                       ("", "is empty")):
        with pytest.raises(ValueError, match=words):
            parse(bad, tmp_path)


def test_a_bad_db_setting_is_one_line_naming_the_key(tmp_path):
    from bbx.master.config import ConfigError, parse_config

    text = '[master]\ndb = "mysql://x/y"\n[[slaves]]\nname = "s"\npassword = "p"\n'
    with pytest.raises(ConfigError) as error:
        parse_config(text, tmp_path / "master.toml")
    assert "master.toml:2" in str(error.value) and "master.db" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_sqlite_master_never_imports_psycopg(tmp_path):
    script = textwrap.dedent("""
        import sys
        from twisted.internet import defer, task
        from bbx.master.config import load_config
        from bbx.master.service import MasterService

        async def main(reactor):
            service = MasterService(load_config(sys.argv[1]), sys.argv[1], reactor)
            await service.start()
            await service.stop()
            print("psycopg loaded" if any(m.startswith("psycopg") for m in sys.modules)
                  else "psycopg not loaded")

        task.react(lambda r: defer.ensureDeferred(main(r)))
    """)
    (tmp_path / "master.toml").write_text(
        '[master]\nlisten = "tcp:0:interface=127.0.0.1"\n[[slaves]]\nname = "s"\npassword = "p"\n'
        '[[builders]]\nname = "b"\nslaves = ["s"]\n')
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "psycopg not loaded"
    assert (tmp_path / "bbx.sqlite").exists()


def test_a_master_on_postgresql_without_psycopg_says_how_to_install_it(tmp_path):
    from tests.support import run_bbx

    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no psycopg here')\n")
    master = tmp_path / "m"
    master.mkdir()
    (master / "master.toml").write_text(
        '[master]\nlisten = "tcp:0:interface=127.0.0.1"\ndb = "postgresql://u@/db?host=/nowhere"\n'
        '[[slaves]]\nname = "s"\npassword = "p"\n')
    done = run_bbx("master", "start", master, env={"PYTHONPATH": str(shadow.parent)})
    assert done.returncode != 0
    line = done.stderr.strip()
    assert "pip install 'bbx[postgres]'" in line and "\n" not in line, done.stderr
    assert "Traceback" not in done.stdout + done.stderr


class SchemaOnPostgresTests(SharedStoreTestCase):
    @defer.inlineCallbacks
    def test_a_new_store_compresses_its_logs_with_lz4(self):
        import psycopg

        yield self.store("a")
        with psycopg.connect(self.url) as conn:
            method = conn.execute("SELECT attcompression FROM pg_attribute WHERE attrelid = "
                                  "'logs'::regclass AND attname = 'data'").fetchone()[0]
        self.assertEqual(method, "l")

    @defer.inlineCallbacks
    def test_two_masters_opening_an_empty_database_at_once_migrate_it_once(self):
        a = Store(self.url, reactor, master="a")
        b = Store(self.url, reactor, master="b")
        versions = yield defer.gatherResults([a.open(), b.open()])
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        request = yield a.queue_request("x")
        pending = yield b.pending_requests()
        self.assertEqual(versions[0], versions[1])
        self.assertEqual([r["id"] for r in pending], [request])


def _terminate(url, role):
    """Kill the server side of a store's connection (as a server restart or a network cut)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                              "application_name LIKE %s", (f"bbx {role}%",)).fetchall()
    assert killed, f"no {role} connection to kill"


class ConnectionLossTests(SharedStoreTestCase):
    @defer.inlineCallbacks
    def test_a_broken_writer_connection_is_replaced_reads_go_on_and_logs_are_kept(self):
        store = yield self.store("a")
        build_id, _n = yield store.start_build(None, "x", "s")
        step = yield store.start_step(build_id, 1, "s")
        store.append_log(step, "stdout", "before\n")
        yield store.flush()
        _terminate(self.url, "writer")
        listed = yield store.builds()  # a read: asked again on a new connection
        _terminate(self.url, "writer")
        store.append_log(step, "stdout", "after\n")
        try:
            yield store.flush()
        except Exception:
            pass  # held in memory and retried, as on a full disk
        rows = []
        for _ in range(200):
            rows = yield store.log(build_id)
            if len(rows) >= 2 or "".join(r[2] for r in rows).endswith("after\n"):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([b["id"] for b in listed], [build_id])
        self.assertEqual("".join(r[2] for r in rows), "before\nafter\n")

    @defer.inlineCallbacks
    def test_a_broken_listener_reconnects_and_asks_everyone_to_resync(self):
        a = yield self.store("a")
        b = yield self.store("b")
        resynced = defer.Deferred()
        b.events.subscribe("resync", lambda *_a: resynced.called or resynced.callback(None))
        _terminate(self.url, "listener b")
        yield resynced
        heard = b.events.wait(reactor, 10, {"request": lambda *_a: True})
        request = yield a.queue_request("x")
        event = yield heard
        self.assertEqual(event[:3], ("request", "a", request))


def test_bbx_masters_on_a_sqlite_master_lists_just_that_master(tmp_path):
    import json

    from tests.buildfarm import Farm, master_toml

    farm = Farm(tmp_path, master_toml("", master_extra='name = "solo"'))
    try:
        farm.start_master()
        result = farm.bbx("masters", "--json")
        assert result.returncode == 0, result.stderr
        [only] = json.loads(result.stdout)
        assert (only["name"], only["state"], only["this"]) == ("solo", "active", True)
        assert "solo (this)" in farm.bbx("masters").stdout
    finally:
        farm.stop()
