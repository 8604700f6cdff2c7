"""A slave with several masters (one farm on a shared store): its config, and the choice of
the next master — on a fake reactor, and with real processes."""

from __future__ import annotations

import socket
import tomllib

from bbx.slave import basedir
from tests.support import BBX, Proc, run_bbx, wait_until
from tests.test_slave_connection import _Bot, _refuse_latest


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_slave_create_takes_several_masters_in_order_and_writes_a_list(tmp_path):
    made = run_bbx("slave", "create", tmp_path / "s", "--master", "a.example.org",
                   "--master", "b.example.org:9990", "w1", "pw")
    assert made.returncode == 0, made.stderr
    written = tomllib.loads((tmp_path / "s" / "slave.toml").read_text())["slave"]["connection"]
    assert written == ["tcp:host=a.example.org:port=9989", "tcp:host=b.example.org:port=9990"]
    config = basedir.load(tmp_path / "s")
    assert config.masters == tuple(written)
    assert config.connection == written[0]
    also = run_bbx("slave", "create", tmp_path / "t", "a.example.org", "w1", "pw",
                   "--master", "b.example.org")
    assert also.returncode == 0, also.stderr
    assert basedir.load(tmp_path / "t").masters == ("tcp:host=a.example.org:port=9989",
                                                     "tcp:host=b.example.org:port=9989")


def test_one_master_is_still_written_as_one_string(tmp_path):
    made = run_bbx("slave", "create", tmp_path / "s", "a.example.org", "w1", "pw")
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "s" / "slave.toml").read_text()
    assert 'connection = "tcp:host=a.example.org:port=9989"' in text
    assert basedir.load(tmp_path / "s").masters == ("tcp:host=a.example.org:port=9989",)


def test_a_bad_master_list_is_one_line_naming_the_key(tmp_path):
    base = tmp_path / "s"
    run_bbx("slave", "create", base, "a.example.org", "w1", "pw")
    path = base / "slave.toml"
    for value, words in (("[]", "non-empty list"), ('["x", "x"]', "lists a master twice"),
                         ("[1]", "non-empty list")):
        text = path.read_text()
        start = text.index("connection = ")
        end = text.index("\n", start)
        path.write_text(text[:start] + f"connection = {value}" + text[end:])
        try:
            basedir.load(base)
        except basedir.BasedirError as e:
            assert words in str(e) and "connection" in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"{value} was accepted")
    twice = run_bbx("slave", "create", tmp_path / "u", "--master", "a", "--master", "a", "w", "p")
    assert twice.returncode == 2 and "twice" in twice.stderr


def test_each_failure_moves_on_to_the_next_master_with_the_usual_backoff():
    from twisted.internet.testing import MemoryReactorClock

    from bbx.slave.connection import SlaveConnection

    reactor = MemoryReactorClock()
    asked = []
    conn = SlaveConnection(reactor, ["tcp:host=127.0.0.1:port=1", "tcp:host=127.0.0.1:port=2"],
                           "w1", "pw", _Bot(), policy=lambda n: asked.append(n) or 1.0)
    conn.start()
    ports = [reactor.tcpClients[-1][1]]
    for _ in range(3):
        _refuse_latest(reactor)
        reactor.advance(1.0)
        ports.append(reactor.tcpClients[-1][1])
    assert ports == [1, 2, 1, 2]
    assert asked == [0, 1, 2], "the backoff counts across masters"


def test_a_slave_attaches_to_the_first_master_that_answers(tmp_path):
    master = tmp_path / "m"
    master.mkdir()
    (master / "master.toml").write_text(
        '[master]\nlisten = "tcp:0:interface=127.0.0.1"\n[[slaves]]\nname = "w1"\n'
        'password = "pw"\n[[builders]]\nname = "b"\nslaves = ["w1"]\n[control]\n'
        'users = [{ name = "admin", password = "a" }]\n')
    proc = Proc([BBX, "master", "start", master], log_path=tmp_path / "master.out")
    slave = None
    try:
        proc.wait_for_output("listening on", 30)
        port = (master / "master.endpoint").read_text().strip().rsplit("=", 1)[1]
        dead = _free_port()
        made = run_bbx("slave", "create", tmp_path / "s", "--master", f"127.0.0.1:{dead}",
                       "--master", f"127.0.0.1:{port}", "w1", "pw", "--maxdelay", "1")
        assert made.returncode == 0, made.stderr
        slave = Proc([BBX, "slave", "start", tmp_path / "s"], log_path=tmp_path / "slave.out")
        slave.wait_for_output(f"attached to the master at tcp:host=127.0.0.1:port={port}", 30)
        assert f"next master tcp:host=127.0.0.1:port={port}" in slave.output()
        status = run_bbx("slave", "status", tmp_path / "s")
        assert f"port={dead} or tcp:host=127.0.0.1:port={port}" in status.stdout
    finally:
        if slave is not None:
            slave.terminate()
        proc.terminate()
