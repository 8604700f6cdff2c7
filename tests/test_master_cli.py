"""`bbx master create | checkconfig | start | stop`, as an operator sees them."""

from __future__ import annotations

import os
import socket
import stat
import tomllib

from tests.realworker import Master, make_master
from tests.support import BBX, EXIT_DEADLINE, Proc, run_bbx, wait_until


def one_clear_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_create_writes_a_private_commented_config_with_defaults(tmp_path):
    result = run_bbx("master", "create", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "m" / "master.toml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert text.count("\n#") >= 5
    config = tomllib.loads(text)
    assert config["master"]["listen"] == "tcp:9989:interface=127.0.0.1"
    assert [s["name"] for s in config["slaves"]] == ["local"]
    assert config["builders"] == [{"name": "local", "slaves": ["local"], "builddir": "local"}]
    assert config["control"]["users"][0]["name"] == "admin"
    assert config["slaves"][0]["password"] in result.stdout  # the operator needs it for the slave
    assert "bbx master start" in result.stdout


def test_create_takes_slaves_and_builders_from_options(tmp_path):
    result = run_bbx("master", "create", tmp_path, "--slave", "a:pa", "--slave", "b:pb",
                     "--builder", "both=a,b")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "master.toml").read_text())
    assert [(s["name"], s["password"]) for s in config["slaves"]] == [("a", "pa"), ("b", "pb")]
    assert config["builders"] == [{"name": "both", "slaves": ["a", "b"], "builddir": "both"}]


def test_create_refuses_to_overwrite_without_force(tmp_path):
    assert run_bbx("master", "create", tmp_path).returncode == 0
    before = (tmp_path / "master.toml").read_text()
    line = one_clear_line(run_bbx("master", "create", tmp_path))
    assert "already exists" in line and "--force" in line
    assert (tmp_path / "master.toml").read_text() == before
    assert run_bbx("master", "create", tmp_path, "--force").returncode == 0
    assert (tmp_path / "master.toml").read_text() != before


def test_create_rejects_a_builder_naming_an_unknown_slave(tmp_path):
    line = one_clear_line(run_bbx("master", "create", tmp_path, "--slave", "a:pa", "--builder", "x=zz"))
    assert "'zz'" in line and not (tmp_path / "master.toml").exists()


def test_create_rejects_a_bad_endpoint_string(tmp_path):
    line = one_clear_line(run_bbx("master", "create", tmp_path, "--listen", "bogus:1"))
    assert "bogus:1" in line


def test_checkconfig_lists_what_is_configured_but_no_passwords(tmp_path):
    config = make_master(tmp_path, slaves=("a:pa", "b:pb"), builders=("both=a,b",))
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "a, b" in result.stdout and "both" in result.stdout
    assert "admin" in result.stdout and "tcp:0:interface=127.0.0.1" in result.stdout
    assert "pa" not in result.stdout.split() and config["control"]["users"][0]["password"] not in result.stdout


def test_checkconfig_of_a_big_farm_names_a_few_and_counts_the_rest(tmp_path):
    slaves = [f"s{i}:p{i}" for i in range(1000)]
    builders = [f"b{i}=s{i}" for i in range(200)]
    make_master(tmp_path, slaves=slaves, builders=builders)
    result = run_bbx("master", "checkconfig", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "slaves (1000): s0, s1," in result.stdout and "s19 and 980 more" in result.stdout
    assert "s20," not in result.stdout and "    b49: slaves s49" in result.stdout
    assert "b50:" not in result.stdout and "and 150 more" in result.stdout
    assert len(result.stdout.splitlines()) < 80


def test_checkconfig_on_a_malformed_file_names_file_line_and_key(tmp_path):
    make_master(tmp_path)
    path = tmp_path / "master.toml"
    path.write_text(path.read_text().replace('slaves = ["w1"]', 'slaves = ["nobody"]'))
    line = one_clear_line(run_bbx("master", "checkconfig", tmp_path))
    assert str(path) in line and "builders[0].slaves" in line and "'nobody'" in line
    number = int(line.split(str(path) + ":")[1].split(":")[0])
    assert 'slaves = ["nobody"]' in path.read_text().splitlines()[number - 1]


def test_checkconfig_on_a_missing_directory_says_how_to_create_one(tmp_path):
    line = one_clear_line(run_bbx("master", "checkconfig", tmp_path / "nope"))
    assert "bbx master create" in line


def test_foreground_master_writes_endpoint_and_pid_and_stops_cleanly(tmp_path):
    make_master(tmp_path / "m")
    master = Master(tmp_path / "m")
    try:
        assert master.endpoint.startswith("tcp:host=127.0.0.1:port=") and master.port > 0
        with socket.create_connection(("127.0.0.1", master.port), timeout=5):
            pass
        assert int((tmp_path / "m" / "master.pid").read_text()) == master.proc.pid
        assert "listening on " + master.endpoint in (tmp_path / "m" / "master.log").read_text()
        result = run_bbx("master", "stop", tmp_path / "m")
        assert result.returncode == 0 and "stopped" in result.stdout
        assert master.proc.popen.wait(EXIT_DEADLINE) == 0
        assert not (tmp_path / "m" / "master.endpoint").exists()
        assert not (tmp_path / "m" / "master.pid").exists()
    finally:
        master.stop()


def test_stop_when_not_running_says_so_and_succeeds(tmp_path):
    make_master(tmp_path)
    result = run_bbx("master", "stop", tmp_path)
    assert result.returncode == 0 and "not running" in result.stdout


def test_daemon_start_returns_once_listening_and_stop_ends_it(tmp_path):
    make_master(tmp_path)
    try:
        result = run_bbx("master", "start", tmp_path, "--daemon", timeout=40)
        assert result.returncode == 0, result.stderr
        pid = int((tmp_path / "master.pid").read_text())
        endpoint = (tmp_path / "master.endpoint").read_text().strip()
        assert str(pid) in result.stdout and endpoint in result.stdout
        port = int(endpoint.rsplit("=", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        result = run_bbx("master", "stop", tmp_path)
        assert result.returncode == 0 and "stopped" in result.stdout
        assert not (tmp_path / "master.endpoint").exists()
    finally:
        pid_file = tmp_path / "master.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass


def test_port_in_use_is_one_clear_line(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert run_bbx("master", "create", tmp_path, "--listen",
                       f"tcp:{port}:interface=127.0.0.1").returncode == 0
        result = run_bbx("master", "start", tmp_path, timeout=30)
        assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
        assert f"port {port} is already in use" in result.stderr
        assert not (tmp_path / "master.pid").exists()
    finally:
        holder.close()


def test_daemon_that_cannot_start_reports_why(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        run_bbx("master", "create", tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1")
        line = one_clear_line(run_bbx("master", "start", tmp_path, "--daemon", timeout=40))
        assert f"port {port} is already in use" in line
    finally:
        holder.close()


def test_second_start_in_the_same_directory_is_refused(tmp_path):
    make_master(tmp_path)
    master = Master(tmp_path)
    try:
        line = one_clear_line(run_bbx("master", "start", tmp_path, timeout=30))
        assert "already running" in line and str(master.proc.pid) in line
    finally:
        master.stop()


def test_sigint_stops_a_foreground_master_with_exit_0(tmp_path):
    make_master(tmp_path)
    proc = Proc([BBX, "master", "start", tmp_path], log_path=tmp_path / "out")
    try:
        proc.wait_for_output("listening on")
        os.kill(proc.pid, 2)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        wait_until(lambda: not (tmp_path / "master.endpoint").exists(), 5)
    finally:
        proc.terminate()


def test_start_with_a_bad_listen_string_names_the_config_line(tmp_path):
    make_master(tmp_path)
    path = tmp_path / "master.toml"
    path.write_text(path.read_text().replace('listen = "tcp:0:interface=127.0.0.1"', 'listen = "bogus:1"'))
    line = one_clear_line(run_bbx("master", "start", tmp_path, timeout=30))
    number = int(line.split(str(path) + ":")[1].split(":")[0])
    assert path.read_text().splitlines()[number - 1] == 'listen = "bogus:1"'
    assert "master.listen" in line and "bogus" in line


def test_create_gives_slaves_tags_and_builders_chosen_by_tags(tmp_path):
    result = run_bbx("master", "create", tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                     "--slave", "a:pa", "--slave", "b:pb", "--slave-tags", "a=linux,docker",
                     "--builder", "images=tag:linux,tag:docker", "--builder", "both=a,b,tag:arm")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "master.toml").read_text())
    assert [s.get("tags") for s in config["slaves"]] == [["linux", "docker"], None]
    assert config["builders"][0]["slaves"] == {"tags": ["linux", "docker"]}
    assert config["builders"][1]["slaves"] == {"names": ["a", "b"], "tags": ["arm"]}
    checked = run_bbx("master", "checkconfig", tmp_path)
    assert "a [linux, docker], b" in checked.stdout
    assert "images: slaves tags linux+docker" in checked.stdout


def test_create_refuses_tags_for_a_slave_it_does_not_create(tmp_path):
    line = one_clear_line(run_bbx("master", "create", tmp_path, "--slave", "a:pa",
                                  "--slave-tags", "x=linux"))
    assert "'x'" in line and "no --slave" in line
    assert not (tmp_path / "master.toml").exists()
    line = one_clear_line(run_bbx("master", "create", tmp_path, "--slave-tags", "local=bad tag"))
    assert "'bad tag' is not a tag" in line
