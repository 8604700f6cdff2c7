"""Fault injection on the master's PB port: issue 8's cases 1, 2, 3, 5, 9 and 10, each broken
on purpose against a real `bbx master` with a real slave attached.

Every test here failed on the code before issue 8 (the figures are in the issue) and passes
now. The master runs with `ulimit -n 256` and a 2 s login deadline (login_timeout in
master.toml), so case 2 needs no 30 s of real time.
"""

from __future__ import annotations

import resource
import sqlite3
import stat
import sys

import pytest

from bbx.master.gate import LOG_BURST
from tests.buildfarm import PASSWORD, Farm, master_toml
from tests.hostile import (HOSTILE, LIST_OPEN, connect, is_closed, list_header, reset_peak_rss,
                           rss_kib, run_child, send_until_cut)
from tests.support import BBX, Proc, run_bbx, wait_until

HOST = "127.0.0.1"
LOGIN_TIMEOUT = 2
# The stated bound: whatever a client sends, the master's RSS grows by less than this.
RSS_BOUND_KIB = 50 * 1024
# The master's descriptors in case 2: as in the issue, where 300 idle sockets exhausted them.
MASTER_NOFILE = 256

BUILDERS = """
[[builders]]
name = "b"
slaves = ["s1"]

[[builders]]
name = "artifacts"
slaves = ["s1"]
[[builders.steps]]
command = "echo made > out.txt"
[[builders.steps]]
upload = { src = "out.txt", dest = "artifacts/out.txt" }
"""


def start_master(farm: Farm, nofile: int | None = None) -> None:
    farm.starts += 1
    argv = [BBX, "master", "start", farm.dir]
    if nofile is not None:
        argv = ["sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', *argv]
    farm.master = Proc(argv, log_path=farm.root / f"master-{farm.starts}.out")
    farm.master.wait_for_output("listening on", timeout=30)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A master (256 descriptors, 2 s login deadline) with slave s1 attached."""
    f = Farm(tmp_path_factory.mktemp("faults"),
             master_toml(BUILDERS, master_extra=f"login_timeout = {LOGIN_TIMEOUT}"))
    try:
        start_master(f, nofile=MASTER_NOFILE)
        f.start_slave("s1")
        yield f
    finally:
        f.stop()


@pytest.fixture
def bare(tmp_path):
    """A fresh master of its own (nothing attached), for tests that count its log lines."""
    f = Farm(tmp_path, master_toml(BUILDERS, master_extra=f"login_timeout = {LOGIN_TIMEOUT}"))
    try:
        start_master(f)
        yield f
    finally:
        f.stop()


def log_of(farm: Farm) -> str:
    return (farm.dir / "master.log").read_text(errors="replace")


def log_since(farm: Farm, mark: int) -> str:
    return log_of(farm)[mark:]


def assert_pingable(farm: Farm) -> None:
    result = farm.bbx("ping", "b", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- case 1: memory exhaustion before login ---------------------------------------------------

def test_case1_20_mb_of_list_opens_are_cut_off_with_one_line_and_little_memory(farm):
    pid, mark = farm.master.pid, len(log_of(farm))
    reset_peak_rss(pid)
    before = rss_kib(pid)
    sent = send_until_cut(farm.port, LIST_OPEN * (10 * 1024 * 1024))  # 20 MB
    assert sent < 20 * 1024 * 1024, "the master took all 20 MB"
    wait_until(lambda: "without logging in" in log_since(farm, mark), 20, what="the drop line")
    new = log_since(farm, mark)
    assert new.count("closing a connection from 127.0.0.1") == 1 and "Traceback" not in new
    assert rss_kib(pid, "VmHWM") - before < RSS_BOUND_KIB
    assert_pingable(farm)


def test_hostile_clients_raise_the_masters_rss_by_less_than_50_mb(farm, tmp_path):
    """Many connections on probation at their byte budget, floods, and an authenticated
    client sending one expression past each cap: the peak stays within the bound."""
    pid = farm.master.pid
    reset_peak_rss(pid)
    before = rss_kib(pid)
    held = []
    for _ in range(200):  # more than the 128 pending connections allowed
        sock = connect(farm.port)
        sock.sendall(LIST_OPEN * 2000)  # 4,000 bytes: just under the pre-login budget
        held.append(sock)
    for _ in range(3):
        send_until_cut(farm.port, LIST_OPEN * (10 * 1024 * 1024))
    port = farm.port
    deep = LIST_OPEN * 5000
    # One list of 600,000 empty lists: 600 KB on the wire, ~40 MB decoded; the item cap stops it.
    wide = list_header(600_000) + b"\x80" * 600_000
    for name, data in (("deep", deep), ("wide", wide)):
        (tmp_path / name).write_bytes(data)
        answer = run_child("raw-after-login", HOST, port, "admin", PASSWORD, tmp_path / name)
        assert answer["dropped"], "an authenticated client past a cap is dropped"
    peak = rss_kib(pid, "VmHWM")
    for sock in held:
        sock.close()
    assert peak - before < RSS_BOUND_KIB, f"RSS rose by {(peak - before) / 1024:.1f} MB"
    assert_pingable(farm)


# -- case 2: connections that never log in ------------------------------------------------------

def test_case2_2000_idle_sockets_do_not_stop_ping_and_all_close_after_the_deadline(farm):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    mark = len(log_of(farm))
    socks = [connect(farm.port) for _ in range(2000)]
    try:
        assert_pingable(farm)  # with 2,000 idle sockets open and 256 descriptors
        wait_until(lambda: all(is_closed(s) for s in socks), LOGIN_TIMEOUT + 20, interval=0.2,
                   what="every idle socket closed by the master")
    finally:
        for s in socks:
            s.close()
    new = log_since(farm, mark)
    assert "Traceback" not in new and "Out of file descriptors" not in new
    # Throttled: at most LOG_BURST lines a minute per address, then a count; not 2,000 lines.
    assert new.count("closing a connection from 127.0.0.1") <= LOG_BURST
    assert_pingable(farm)


# -- case 3: log flooding, password guessing, garbage ------------------------------------------

def test_case3_fifty_600_kb_names_add_little_to_the_log(bare):
    mark = len(log_of(bare))
    answer = run_child("logins", HOST, bare.port, "@600000", "pw", 50)
    assert set(answer["outcomes"]) == {"dropped"}
    new = log_since(bare, mark)
    assert len(new) < 20_000, f"the log grew by {len(new)} bytes"
    assert max(len(line) for line in new.splitlines()) < 600


def test_case3_names_in_log_lines_are_cut_and_escaped(bare):
    mark = len(log_of(bare))
    name = "evil\n\x1b[31mroot" + "y" * 1500
    answer = run_child("logins", HOST, bare.port, name, "pw", 1)
    assert answer["outcomes"] == ["refused"]
    new = log_since(bare, mark)
    line = next(ln for ln in new.splitlines() if "refused login" in ln)
    assert "evil\\n\\x1b[31mroot" in line and "(1514 characters)" in line and "yyy" * 30 not in line


def test_case3_wrong_passwords_are_paced_while_the_attached_slave_is_served(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        start_master(farm)
        farm.start_slave("s1")
        pinger = Proc([sys.executable, HOSTILE, "pinger", HOST, farm.port, "admin",
                       PASSWORD, "b", 10], log_path=tmp_path / "pinger.out")
        pinger.wait_for_output("logged_in", timeout=30)
        # 4 tries answered at once, then 0.5 + 1 + 2 + 4 s of delays before tries 5 to 8.
        answer = run_child("logins", HOST, farm.port, "admin", "wrong", 8)
        assert answer["outcomes"] == ["refused"] * 8
        assert answer["elapsed"] >= 7.4, answer
        assert answer["times"][-1] > answer["times"][5] > answer["times"][0], answer
        pinger.wait_for_output("worst", timeout=60)
        served = __import__("json").loads(pinger.output().strip().splitlines()[-1])
        # Not held behind the guesser: no ping waited as long as its longest delay (4 s).
        assert served["worst"] < 4.0 and served["pings"] >= 10, served
    finally:
        farm.stop()


def _pb(*items) -> bytes:
    """Banana bytes of a list of strings (str) and small ints, as a peer in dialect pb sends."""
    out = list_header(len(items))
    for item in items:
        if isinstance(item, int):
            out += bytes([item, 0x81])
        else:
            out += bytes([len(item), 0x82]) + item.encode()
    return out


PB = _pb("pb")[2:]  # the dialect choice alone: the string "pb"
GARBAGE = [
    b"\xff" * 64,                        # an unknown type byte
    b"\x05\x82hello",                    # a dialect the master did not offer
    b"\x01\x80\x7f\x87",                 # a list whose element is an unknown vocabulary number
    b"\x7f" * 100,                       # a prefix longer than Banana allows
    PB + b"\x05\x82hello",               # a message that is not a list
    PB + _pb(2, 1, 1),                   # a list of ints where a message name should be
    PB + _pb("message", 1, "root", "nosuch", 1) + b"\x00\x80\x00\x80",  # no such method
    PB + _pb("message", 1, "root", "login", 1) + _pb("tuple", "a", "b") + b"\x00\x80",  # bad args
]


def test_case3_garbage_gets_one_line_each_and_no_traceback(bare):
    mark = len(log_of(bare))
    for data in GARBAGE:
        sock = connect(bare.port)
        sock.sendall(data)
        wait_until(lambda: is_closed(sock), 10, what=f"the master to drop {data[:8]!r}")
        sock.close()
    new = log_since(bare, mark)
    assert "Traceback" not in new and "Unhandled" not in new
    assert new.count("closing a connection from 127.0.0.1") == len(GARBAGE), new


def test_a_call_to_a_missing_method_keeps_its_type_and_logs_one_line(bare):
    """Peers detect older peers by the remote type NoSuchMethod, so it must stay that type;
    only the traceback in the log goes."""
    mark = len(log_of(bare))
    answer = run_child("call", HOST, bare.port, "admin", PASSWORD, "nosuch")
    # A perspective says AttributeError (a Referenceable NoSuchMethod): what Buildbot expects.
    assert answer["error"] == "builtins.AttributeError", answer
    new = log_since(bare, mark)
    assert "Traceback" not in new and new.count("refused a call to nosuch") == 1, new


# -- case 5: secrets at rest, master side -------------------------------------------------------

def test_case5_every_file_the_master_creates_is_private(farm):
    result = farm.bbx("build", "artifacts", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    d = farm.dir
    for name in ("bbx.sqlite", "master.log", "master.pid", "master.endpoint",
                 "artifacts/out.txt"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    for extra in ("bbx.sqlite-wal", "bbx.sqlite-shm"):
        if (d / extra).exists():
            assert stat.S_IMODE((d / extra).stat().st_mode) == 0o600, extra
    assert stat.S_IMODE((d / "artifacts").stat().st_mode) == 0o700


def test_case5_a_buildbot_workers_clear_environment_never_reaches_the_store(tmp_path):
    from tests.realworker import Worker

    toml = master_toml('[[builders]]\nname = "bw"\nslaves = ["w1"]\n', slaves=(("w1", 1),))
    farm = Farm(tmp_path, toml)
    worker = None
    try:
        start_master(farm)
        worker = Worker(tmp_path / "w1", farm.port, "w1", "pw-w1")
        assert worker.start().returncode == 0, worker.log()[-2000:]
        result = farm.bbx("run", "bw", "--log-environ", "--env", "GITHUB_TOKEN=secret123",
                          "--", "true", timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        conn = sqlite3.connect(farm.db)
        headers = b"".join(bytes(r[0]) for r in conn.execute(
            "SELECT data FROM logs WHERE stream = 'header'"))
        conn.close()
        assert b"GITHUB_TOKEN=<redacted>" in headers, "the worker's environment was stored"
        for name in ("bbx.sqlite", "bbx.sqlite-wal"):
            path = farm.dir / name
            if path.exists():
                assert b"secret123" not in path.read_bytes(), name
    finally:
        if worker is not None:
            worker.stop()
        farm.stop()


# -- case 9: wrong role -------------------------------------------------------------------------

def test_case9_a_slave_with_control_credentials_is_refused_on_both_sides(farm):
    mark = len(log_of(farm))
    basedir = farm.root / "intruder"
    made = run_bbx("slave", "create", basedir, f"127.0.0.1:{farm.port}", "admin", PASSWORD,
                   "--maxdelay", "1")
    assert made.returncode == 0, made.stderr
    proc = Proc([BBX, "slave", "start", basedir], log_path=farm.root / "intruder.out")
    try:
        wait_until(lambda: proc.output().count("is a control user, not a slave") >= 2, 30,
                   what="two refusals (it retries)")
        assert "attached" not in proc.output().replace("not attached", "")
        assert "a control user's name used by a slave" in log_since(farm, mark)
        assert "perspective_keepalive" not in log_since(farm, mark)
        status = run_bbx("slave", "status", basedir)
        assert "last connection state: attached" not in status.stdout, status.stdout
    finally:
        proc.terminate()
    assert "admin" not in farm.attached()


def test_case9_a_control_client_with_slave_credentials_is_refused(farm):
    result = run_bbx("ping", "b", "--master", f"127.0.0.1:{farm.port}", "--user", "s1",
                     "--password", "pw-s1")
    assert result.returncode == 4 and "refused" in result.stderr, result.stderr


# -- case 10: config that passes but breaks -----------------------------------------------------

@pytest.mark.parametrize("key,value,words", [
    ("keepalive_interval", "nan", "finite"),
    ("keepalive_timeout", "inf", "finite"),
    ("login_timeout", "-inf", "positive"),
    ("login_timeout", "0", "positive"),
])
def test_case10_non_finite_and_nonsensical_numbers_are_refused_with_file_and_line(
        tmp_path, key, value, words):
    (tmp_path / "master.toml").write_text(master_toml(BUILDERS, master_extra=f"{key} = {value}"))
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "master.toml:3:" in message and key in message and words in message, message


def test_case10_an_empty_master_toml_is_refused_with_the_fix(tmp_path):
    (tmp_path / "master.toml").write_text("# nothing yet\n")
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode != 0 and "is empty" in result.stderr
    assert "bbx master create" in result.stderr


def test_case10_a_step_timeout_of_nan_is_refused(tmp_path):
    steps = '[[builders]]\nname = "x"\nslaves = ["s1"]\n[[builders.steps]]\ncommand = "true"\ntimeout = nan\n'
    (tmp_path / "master.toml").write_text(master_toml(steps))
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode != 0 and "timeout" in result.stderr and "nan" in result.stderr


@pytest.mark.parametrize("workdir", ["/etc", "../elsewhere", "src/../../up", "~root"])
def test_workdir_outside_the_builder_is_refused_by_bbx_run_and_in_master_toml(farm, tmp_path, workdir):
    result = farm.bbx("run", "b", "--workdir", workdir, "--", "pwd")
    assert result.returncode != 0 and "leaves the builder's directory" in result.stderr, (
        result.stdout + result.stderr)
    steps = ('[[builders]]\nname = "x"\nslaves = ["s1"]\n[[builders.steps]]\ncommand = "pwd"\n'
             f'workdir = "{workdir}"\n')
    (tmp_path / "master.toml").write_text(master_toml(steps))
    checked = run_bbx("master", "checkconfig", tmp_path)
    assert checked.returncode != 0 and "leaves the builder's directory" in checked.stderr


def test_a_relative_workdir_is_used_by_bbx_run(farm):
    result = farm.bbx("run", "b", "--workdir", "sub/dir", "--", "pwd")
    assert result.returncode == 0 and "/b/sub/dir" in result.stdout, result.stdout
