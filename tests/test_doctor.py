"""bbx doctor against a real master and slave: every stage, and each failure provoked."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from tests.buildfarm import PASSWORD, Farm, master_toml, running_farm
from tests.support import run_bbx
from tests.tlsca import CertAuthority, self_signed

BUILDERS = '''
[[builders]]
name = "b"
slaves = ["s1"]
[[builders.steps]]
command = ["true"]
'''


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    yield from running_farm(tmp_path_factory.mktemp("doctor"),
                            master_toml(BUILDERS, slaves=(("s1", 1), ("s2", 1))), "s1")


def stages(result) -> dict:
    answer = json.loads(result.stdout)
    return {s["name"]: s for s in answer["stages"]}


def slave_dir(farm, name: str, password: str, tmp_path):
    """A slave directory (never started) that logs in as `name` with `password`."""
    d = tmp_path / f"sd-{name}"
    made = run_bbx("slave", "create", d, f"127.0.0.1:{farm.port}", name, password)
    assert made.returncode == 0, made.stderr
    return d


def test_every_stage_passes_for_the_operator(farm):
    result = farm.bbx("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("resolve", "tcp", "pb", "login", "builders", "rtt", "clock"):
        assert re.search(rf"^✓ {name} ", result.stdout, re.M), result.stdout
    assert "✗" not in result.stdout and "tls" not in result.stdout  # tcp: no TLS stage
    found = stages(farm.bbx("doctor", "--json"))
    assert found["builders"]["builders"] == ["b"] and found["clock"]["offset"] is not None


def test_a_slave_dir_is_checked_as_that_slave_up_to_its_builder_list(farm, tmp_path):
    d = slave_dir(farm, "s2", "pw-s2", tmp_path)
    result = farm.bbx("doctor", d, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = stages(result)
    assert found["attach"]["ok"] and found["builders"]["builders"] == []  # s2 is in no builder
    assert "s2" not in farm.attached()  # doctor took no builders and left


def test_wrong_password_and_unknown_name_are_told_apart_with_the_masters_dir(farm, tmp_path):
    wrong = farm.bbx("doctor", slave_dir(farm, "s2", "not-it", tmp_path))
    assert wrong.returncode == 4
    assert "✗ login     refused: wrong password for slave 's2'" in wrong.stdout
    unknown = farm.bbx("doctor", slave_dir(farm, "ghost", "x", tmp_path))
    assert unknown.returncode == 4
    assert "✗ login     refused: the master has no slave named 'ghost'" in unknown.stdout
    assert "fix:" in unknown.stdout and unknown.stderr.count("\n") == 1


def test_without_the_masters_dir_a_refusal_gives_no_oracle(farm, tmp_path):
    d = slave_dir(farm, "ghost", "x", tmp_path)
    result = run_bbx("doctor", d, cwd=tmp_path)
    assert result.returncode == 4
    assert "unknown slave name or wrong password" in result.stdout
    assert "--master-dir" in result.stdout


def test_a_wrong_control_password_is_named(farm):
    result = farm.bbx("doctor", "--user", "admin", "--password", "nope")
    assert result.returncode == 4 and "wrong password for control user 'admin'" in result.stdout


def test_a_live_slave_of_that_name_is_a_duplicate_session(farm, tmp_path):
    result = farm.bbx("doctor", slave_dir(farm, "s1", "pw-s1", tmp_path))
    assert result.returncode == 4
    assert "✗ login     the master already has a live slave named s1" in result.stdout
    assert "s1" in farm.attached()  # the real s1 kept its connection


def test_a_closed_port_fails_at_tcp(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_bbx("doctor", "--master", f"127.0.0.1:{port}", "--user", "u", "--password", "p")
    assert result.returncode == 3
    assert f"✗ tcp       127.0.0.1:{port} refused the connection" in result.stdout
    assert "✓ resolve" in result.stdout and "pb" not in result.stdout


def test_an_unknown_host_fails_at_resolve():
    result = run_bbx("doctor", "--master", "no-such-host.invalid:9989", "--user", "u",
                     "--password", "p", "--timeout", "5")
    assert result.returncode == 3 and "✗ resolve   cannot resolve no-such-host.invalid" in result.stdout


@pytest.fixture
def silent_port():
    """A port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_port_that_never_speaks_pb_fails_at_pb_within_the_deadline(silent_port):
    result = run_bbx("doctor", "--master", f"127.0.0.1:{silent_port}", "--user", "u",
                     "--password", "p", "--timeout", "1", timeout=20)
    assert result.returncode == 3
    assert "✓ tcp" in result.stdout and "✗ pb        connected, but no PB answer within 1 s" in result.stdout


def test_tls_to_a_plain_port_is_a_tls_mismatch(farm):
    result = run_bbx("doctor", "--master", f"tls:host=127.0.0.1:port={farm.port}", "--user",
                     "admin", "--password", PASSWORD, "--timeout", "3", timeout=30)
    assert result.returncode == 3
    assert "✓ tcp" in result.stdout and "✗ tls       " in result.stdout


def test_an_ssl_endpoint_with_nothing_to_check_it_is_one_usage_line(farm):
    result = run_bbx("doctor", "--master", f"ssl:host=127.0.0.1:port={farm.port}", "--user",
                     "admin", "--password", PASSWORD)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "would not check the master's certificate at all" in result.stderr


def tls_farm(tmp_path, issued) -> Farm:
    """A running master that serves `issued` (a tests.tlsca.Issued key and certificate)."""
    toml = master_toml(BUILDERS).replace(
        'listen = "tcp:0:interface=127.0.0.1"',
        f'listen = "ssl:0:privateKey={issued.key_path}:certKey={issued.cert_path}:interface=127.0.0.1"')
    farm = Farm(tmp_path / "tls", toml)
    farm.start_master()
    return farm


def test_a_tls_master_passes_every_stage_and_shows_its_certificate(tmp_path):
    issued = self_signed(tmp_path / "cert", "master", names=("127.0.0.1",), cn="bbx-test")
    farm = tls_farm(tmp_path, issued)
    try:
        assert (farm.dir / "master.endpoint").read_text().startswith("tls:")
        # In the master's directory doctor pins the certificate master.toml serves.
        result = farm.bbx("doctor", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        found = stages(result)
        assert found["tls"]["ok"] and found["tls"]["mode"] == "pin"
        assert found["tls"]["certificate"]["subject"] == "CN=bbx-test"
        assert found["tls"]["certificate"]["fingerprint"] == issued.fingerprint
        assert found["tls"]["detail"].endswith("checked by the pinned fingerprint")
        assert found["login"]["ok"] and found["builders"]["builders"] == ["b"]
        # The same port without TLS: connected, but the PB stage gets no answer.
        plain = run_bbx("doctor", "--master", f"127.0.0.1:{farm.port}", "--user", "admin",
                        "--password", PASSWORD, "--timeout", "2", timeout=30)
        assert plain.returncode == 3 and "✗ pb" in plain.stdout
    finally:
        farm.stop()


def test_a_tls_mismatch_fails_the_tls_stage_with_exit_6_saying_what_did_not_match(tmp_path):
    ca = CertAuthority(tmp_path / "ca")
    issued = ca.issue("other", names=("other.example",))
    farm = tls_farm(tmp_path, issued)
    remote = ["doctor", "--user", "admin", "--password", PASSWORD, "--timeout", "5"]
    endpoint = f"tls:host=127.0.0.1:port={farm.port}"
    try:
        # The right CA, but the certificate is for another host name than the one dialled.
        named = run_bbx(*remote, "--master", endpoint, "--ca", ca.cert_path, cwd=tmp_path)
        assert named.returncode == 6, named.stdout + named.stderr
        out = named.stdout
        assert "✓ tcp" in out
        assert re.search(r"^✗ tls +the master's certificate is for DNS:other.example, not "
                         r"127.0.0.1 \(certificate CN=bbx test master", out, re.M), out
        assert f"SHA-256 {issued.fingerprint}" in out
        assert "    cause: 127.0.0.1 is a name or address the certificate does not list" in out
        assert "    fix:   connect to one of those names" in out
        assert "✓ pb" not in out and "login" not in out  # nothing after the tls stage
        assert named.stderr.startswith("bbx: doctor: tls failed: the master's certificate is for")

        # A pin of some other certificate.
        stranger = self_signed(tmp_path / "stranger", "stranger")
        pinned = run_bbx(*remote, "--master", endpoint, "--fingerprint", stranger.fingerprint,
                         "--json", cwd=tmp_path)
        assert pinned.returncode == 6, pinned.stdout + pinned.stderr
        answer = json.loads(pinned.stdout)
        assert answer["exit"] == 6 and not answer["ok"]
        tls_stage = stages(pinned)["tls"]
        assert tls_stage["mode"] == "pin" and not tls_stage["ok"]
        assert tls_stage["detail"].startswith(f"the master's certificate has SHA-256 fingerprint "
                                              f"{issued.fingerprint}, not the pinned "
                                              f"{stranger.fingerprint}")
        assert "intercepting" in tls_stage["cause"] and tls_stage["fix"]
        assert tls_stage["certificate"]["san"] == ["DNS:other.example"]

        # A slave directory pinned to the wrong certificate: doctor checks it as that slave would.
        sd = tmp_path / "sd"
        made = run_bbx("slave", "create", sd, f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                       "--fingerprint", stranger.fingerprint)
        assert made.returncode == 0, made.stderr
        as_slave = run_bbx("doctor", sd, "--timeout", "5", cwd=tmp_path)
        assert as_slave.returncode == 6 and "not the pinned" in as_slave.stdout

        # The right pin passes the tls stage and every later one connects with it.
        right = run_bbx(*remote, "--master", endpoint, "--fingerprint", issued.fingerprint,
                        cwd=tmp_path)
        assert right.returncode == 0, right.stdout + right.stderr
        assert "checked by the pinned fingerprint" in right.stdout and "✓ login" in right.stdout
    finally:
        farm.stop()
