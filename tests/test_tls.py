"""TLS done properly (issue 8, case 8): real TLS on loopback, certificates made in tmp_path.

The faults this module reproduces, each failing on the code before it:
* a CA-signed certificate with no subjectAltName and CN=other was accepted for 127.0.0.1 (the
  slave logged a critical CertificateError from Twisted's verify callback and attached anyway);
* an `ssl:` client string connected with no check and no warning;
* there was no `bbx master create --tls`, and a private CA worked only through trustRoots=.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import socket
import stat
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest

from bbx.pb import tls
from tests.realworker import WORKER
from tests.support import BBX, Proc, run_bbx, wait_until
from tests.tlsca import CertAuthority, self_signed

REFUSED = "refused the master at"
ATTACHED = "message from master: attached"


# -- helpers ------------------------------------------------------------------------------------

class TlsMaster:
    """A `bbx master start` child whose listen string serves the given key and certificate."""

    def __init__(self, directory: Path, key: Path | None = None, cert: Path | None = None, *,
                 create_args=(), slaves=("s1:pw-s1",)):
        self.dir = Path(directory)
        args = ["master", "create", self.dir, "--listen", "tcp:0:interface=127.0.0.1", *create_args]
        for s in slaves:
            args += ["--slave", s]
        made = run_bbx(*args)
        assert made.returncode == 0, made.stderr
        self.create_output = made.stdout
        if key is not None:
            path = self.dir / "master.toml"
            listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            path.write_text(re.sub(r'^listen = ".*"$', f'listen = "{listen}"', path.read_text(),
                                   flags=re.M))
        self.config = tomllib.loads((self.dir / "master.toml").read_text())
        self.proc = Proc([BBX, "master", "start", self.dir],
                         log_path=self.dir.parent / f"{self.dir.name}.out")
        self.proc.wait_for_output("listening on", timeout=30)
        self.endpoint = (self.dir / "master.endpoint").read_text().strip()
        self.port = int(self.endpoint.rsplit("=", 1)[1])

    @property
    def admin(self) -> tuple[str, str]:
        user = self.config["control"]["users"][0]
        return user["name"], user["password"]

    def log(self) -> str:
        return self.proc.output()

    def stop(self) -> None:
        self.proc.terminate()


def create_slave(directory: Path, *args) -> Path:
    made = run_bbx("slave", "create", directory, *args, "--maxdelay", "1")
    assert made.returncode == 0, made.stdout + made.stderr
    return Path(directory)


def start_slave(directory: Path) -> Proc:
    return Proc([BBX, "slave", "start", directory], log_path=directory.parent / f"{directory.name}.out")


def refusals(proc: Proc) -> list[str]:
    return [ln for ln in proc.output().splitlines() if REFUSED in ln]


def assert_refused_and_retried(proc: Proc, master: TlsMaster, *expected: str) -> str:
    """Two refusals, each one line with a retry; never attached; returns the first line."""
    wait_until(lambda: len(refusals(proc)) >= 2, 30, what="two refused handshakes")
    lines = refusals(proc)
    for text in expected:
        assert text in lines[0], lines[0]
    assert all("retrying in" in ln for ln in lines), lines
    out = proc.output()
    assert ATTACHED not in out and "attached to the master" not in out
    assert "Traceback" not in out and "[critical]" not in out, out
    assert "slave s1 attached" not in master.log()
    assert proc.popen.poll() is None, "the slave keeps trying"
    return lines[0]


class SwitchProxy:
    """A loopback TCP forwarder whose target can be switched: a man in the middle, then not."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                    except OSError:
                        client.close()
                        continue
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if data and other is not None:
                    try:
                        other.sendall(data)
                        continue
                    except OSError:
                        pass
                for s in (sock, other):
                    if s is not None and s in peers:
                        sel.unregister(s)
                        peers.pop(s, None)
                        s.close()
        for s in list(peers):
            s.close()
        self.listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture()
def ca(tmp_path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


@pytest.fixture()
def cleanup():
    things = []
    yield things
    for thing in reversed(things):
        for name in ("terminate", "stop", "close"):
            if hasattr(thing, name):
                getattr(thing, name)()
                break


# -- the slave checks the master ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["--ca", "trustRoots="])
def test_a_ca_signed_certificate_without_subjectaltname_is_refused_and_the_slave_never_attaches(
        tmp_path, ca, cleanup, how):
    issued = ca.issue("nosan", names=(), cn="other")
    master = TlsMaster(tmp_path / "m", issued.key_path, issued.cert_path)
    cleanup.append(master)
    if how == "--ca":
        slave = create_slave(tmp_path / "s", f"127.0.0.1:{master.port}", "s1", "pw-s1", "--use-tls",
                             "--ca", ca.cert_path)
    else:  # the issue's report: Twisted's own trustRoots= option
        slave = create_slave(tmp_path / "s", "--connection-string",
                             f"tls:host=127.0.0.1:port={master.port}:trustRoots={ca.dir}",
                             "s1", "pw-s1")
    proc = start_slave(slave)
    cleanup.append(proc)
    line = assert_refused_and_retried(proc, master, "has no subjectAltName (CN=other)",
                                      "valid for no host name")
    assert "reissue it with 127.0.0.1 in its subjectAltName" in line


def test_checkconfig_warns_of_a_certificate_slaves_will_refuse(tmp_path, ca):
    made = run_bbx("master", "create", tmp_path / "m")
    assert made.returncode == 0, made.stderr
    issued = ca.issue("nosan", names=(), cn="other", expired=True)
    path = tmp_path / "m" / "master.toml"
    listen = f"ssl:9989:interface=127.0.0.1:privateKey={issued.key_path}:certKey={issued.cert_path}"
    path.write_text(re.sub(r'^listen = ".*"$', f'listen = "{listen}"', path.read_text(), flags=re.M))
    checked = run_bbx("master", "checkconfig", tmp_path / "m")
    assert checked.returncode == 0, checked.stderr
    assert "for no host (no subjectAltName)" in checked.stdout
    assert "warning: without a subjectAltName" in checked.stdout
    assert "warning: the certificate has expired" in checked.stdout


def test_a_certificate_for_another_host_name_is_refused(tmp_path, ca, cleanup):
    issued = ca.issue("other", names=("other.example", "10.9.9.9"))
    master = TlsMaster(tmp_path / "m", issued.key_path, issued.cert_path)
    cleanup.append(master)
    slave = create_slave(tmp_path / "s", f"127.0.0.1:{master.port}", "s1", "pw-s1", "--ca", ca.cert_path)
    proc = start_slave(slave)
    cleanup.append(proc)
    assert_refused_and_retried(proc, master, "is for DNS:other.example, IP:10.9.9.9, not 127.0.0.1",
                               "connect to one of those names")
    # bbx slave status names it from DIR/slave.state, with the exit code of a refused certificate.
    status = run_bbx("slave", "status", slave, "--json")
    assert status.returncode == 6, status.stdout + status.stderr
    state = json.loads(status.stdout)["connection"]
    assert state["reason"] == "untrusted" and "is for DNS:other.example" in state["detail"]


def test_an_expired_certificate_and_one_from_an_unknown_ca_are_refused(tmp_path, ca, cleanup):
    expired = ca.issue("expired", expired=True)
    master = TlsMaster(tmp_path / "m", expired.key_path, expired.cert_path)
    cleanup.append(master)
    slave = create_slave(tmp_path / "s", f"127.0.0.1:{master.port}", "s1", "pw-s1", "--ca", ca.cert_path)
    proc = start_slave(slave)
    cleanup.append(proc)
    assert_refused_and_retried(proc, master, "has expired", "renew it")

    stranger = CertAuthority(tmp_path / "other-ca", cn="another CA")
    slave2 = create_slave(tmp_path / "s2", f"127.0.0.1:{master.port}", "s1", "pw-s1",
                          "--ca", stranger.cert_path)
    proc2 = start_slave(slave2)
    cleanup.append(proc2)
    assert_refused_and_retried(proc2, master, "signed by a CA that is not trusted",
                               "give the CA that signed it with --ca FILE")


def test_a_slave_with_the_ca_that_signed_the_masters_certificate_attaches(tmp_path, ca, cleanup):
    issued = ca.issue("good", names=("127.0.0.1", "localhost"))
    master = TlsMaster(tmp_path / "m", issued.key_path, issued.cert_path)
    cleanup.append(master)
    slave = create_slave(tmp_path / "s", f"127.0.0.1:{master.port}", "s1", "pw-s1", "--use-tls",
                         "--ca", ca.cert_path)
    config = tomllib.loads((slave / "slave.toml").read_text())["slave"]
    assert config["connection"] == f"tls:host=127.0.0.1:port={master.port}"
    assert config["tls_ca"] == str(ca.cert_path)
    proc = start_slave(slave)
    cleanup.append(proc)
    proc.wait_for_output(ATTACHED, 30)
    assert REFUSED not in proc.output()
    wait_until(lambda: "slave s1 attached" in master.log(), 20, what="the master's attach line")


def test_a_pinned_slave_refuses_a_man_in_the_middle_keeps_retrying_and_attaches_to_the_real_master(
        tmp_path, cleanup):
    real = TlsMaster(tmp_path / "real", create_args=["--tls"])
    cleanup.append(real)
    pin = re.search(r"fingerprint: ([0-9A-F:]{95})", real.create_output).group(1)
    assert pin == tls.fingerprint_of_file(real.dir / "master.crt")
    fake = self_signed(tmp_path / "fake-cert", "fake", names=("127.0.0.1",))
    impostor = TlsMaster(tmp_path / "impostor", fake.key_path, fake.cert_path)
    cleanup.append(impostor)
    proxy = SwitchProxy(impostor.port)
    cleanup.append(proxy)
    slave = create_slave(tmp_path / "s", f"127.0.0.1:{proxy.port}", "s1", "pw-s1",
                         "--fingerprint", pin.replace(":", "").lower())
    assert tomllib.loads((slave / "slave.toml").read_text())["slave"]["tls_fingerprint"] == pin
    proc = start_slave(slave)
    cleanup.append(proc)
    line = assert_refused_and_retried(proc, impostor, f"has SHA-256 fingerprint {fake.fingerprint}",
                                      f"not the pinned {pin}", "intercepting the connection")
    assert "slave s1 attached" not in real.log()
    proxy.target = real.port  # the man in the middle goes away
    proc.wait_for_output(ATTACHED, 30)
    wait_until(lambda: "slave s1 attached" in real.log(), 20, what="the real master's attach line")
    assert "slave s1 attached" not in impostor.log()
    assert line.count(REFUSED) == 1


# -- plain ssl: strings ---------------------------------------------------------------------------

def test_slave_create_refuses_an_ssl_string_that_would_check_nothing(tmp_path):
    made = run_bbx("slave", "create", tmp_path / "s", "--connection-string",
                   "ssl:host=127.0.0.1:port=9989", "s1", "pw")
    assert made.returncode == 2
    assert made.stderr.count("\n") == 1 and "Traceback" not in made.stderr
    assert "would not check the master's certificate at all" in made.stderr
    assert "--ca FILE" in made.stderr and "--insecure" in made.stderr
    assert not (tmp_path / "s" / "slave.toml").exists()


def test_an_insecure_slave_attaches_and_logs_the_fingerprint_it_did_not_check(tmp_path, cleanup):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"], slaves=("s1:pw-s1",))
    cleanup.append(master)
    made = run_bbx("slave", "create", tmp_path / "s", "--connection-string",
                   f"ssl:host=127.0.0.1:port={master.port}", "s1", "pw-s1", "--insecure")
    assert made.returncode == 0, made.stderr
    assert "will not be checked (--insecure)" in made.stdout
    proc = start_slave(tmp_path / "s")
    cleanup.append(proc)
    proc.wait_for_output(ATTACHED, 30)
    pin = tls.fingerprint_of_file(master.dir / "master.crt")
    assert f"not checking the TLS certificate of 127.0.0.1 (insecure); its SHA-256 fingerprint is {pin}" \
        in proc.output()


def test_slave_start_refuses_a_hand_edited_ssl_connection_without_a_check(tmp_path):
    slave = create_slave(tmp_path / "s", "127.0.0.1:9989", "s1", "pw")
    path = slave / "slave.toml"
    path.write_text(path.read_text().replace('"tcp:host=127.0.0.1:port=9989"',
                                             '"ssl:host=127.0.0.1:port=9989"'))
    started = run_bbx("slave", "start", slave, timeout=30)
    assert started.returncode == 2
    assert started.stderr.count("\n") == 1, started.stderr
    assert f"{path} line" in started.stderr and "connection" in started.stderr
    assert "tls_ca = FILE" in started.stderr and "tls_insecure = true" in started.stderr


@pytest.mark.parametrize("args, text", [
    (["--connection-string", "tcp:host=127.0.0.1:port=9989", "--ca", "CA"], "are for TLS connections"),
    (["127.0.0.1", "--ca", "CA", "--fingerprint", "AA" * 32], "give one of --ca, --fingerprint"),
    (["127.0.0.1", "--fingerprint", "12:34"], "--fingerprint: '12:34' is not a SHA-256 fingerprint"),
    (["127.0.0.1", "--ca", "MISSING"], "cannot read"),
    (["127.0.0.1", "--ca", "NOTPEM"], "holds no PEM certificate"),
    (["--connection-string", "tls:host=h:port=1:certificate=c.pem", "--ca", "CA"],
     "client certificates are not supported"),
])
def test_slave_create_tls_mistakes_are_one_line(tmp_path, ca, args, text):
    (tmp_path / "notpem").write_text("hello\n")
    subst = {"CA": str(ca.cert_path), "MISSING": str(tmp_path / "missing.pem"),
             "NOTPEM": str(tmp_path / "notpem")}
    args = [subst.get(a, a) for a in args]
    if args[0] == "127.0.0.1":
        args = ["127.0.0.1", "s1", "pw", *args[1:]]
    else:
        args = [args[0], args[1], "s1", "pw", *args[2:]]
    made = run_bbx("slave", "create", tmp_path / "s", *args)
    assert made.returncode == 2, made.stdout + made.stderr
    assert made.stderr.count("\n") == 1 and text in made.stderr, made.stderr
    assert not (tmp_path / "s" / "slave.toml").exists()


# -- bbx master create --tls --------------------------------------------------------------------

def test_master_create_tls_writes_a_private_key_and_a_certificate_for_the_listen_host(tmp_path):
    from cryptography import x509

    made = run_bbx("master", "create", tmp_path / "m", "--tls")
    assert made.returncode == 0, made.stderr
    key, cert = tmp_path / "m" / "master.key", tmp_path / "m" / "master.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    assert set(tls.subject_alt_names(certificate)) == {"IP:127.0.0.1", "IP:::1", "DNS:localhost"}
    pin = tls.fingerprint(certificate)
    assert f"certificate SHA-256 fingerprint: {pin}" in made.stdout
    assert f"--fingerprint {pin}" in made.stdout
    listen = tomllib.loads((tmp_path / "m" / "master.toml").read_text())["master"]["listen"]
    assert listen == "ssl:9989:interface=127.0.0.1:privateKey=master.key:certKey=master.crt"
    # Relative to the master's directory, wherever checkconfig runs.
    checked = run_bbx("master", "checkconfig", tmp_path / "m", cwd="/")
    assert checked.returncode == 0, checked.stderr
    assert f"SHA-256 fingerprint {pin}" in checked.stdout
    again = run_bbx("master", "create", tmp_path / "m", "--tls", "--force")
    assert again.returncode == 0 and pin not in again.stdout, "--force makes a new key"


def test_master_create_tls_on_all_interfaces_names_this_host_and_the_given_names(tmp_path):
    from cryptography import x509

    made = run_bbx("master", "create", tmp_path / "m", "--listen", "tcp:9989", "--tls",
                   "--tls-name", "ci.example.org", "--tls-name", "192.0.2.7")
    assert made.returncode == 0, made.stderr
    certificate = x509.load_pem_x509_certificate((tmp_path / "m" / "master.crt").read_bytes())
    names = tls.subject_alt_names(certificate)
    assert {"IP:127.0.0.1", "DNS:localhost", f"DNS:{socket.gethostname()}", "DNS:ci.example.org",
            "IP:192.0.2.7"} <= set(names)
    assert tls.name_problem(certificate, "ci.example.org") is None
    assert tls.name_problem(certificate, "192.0.2.7") is None
    assert "not elsewhere.example" in tls.name_problem(certificate, "elsewhere.example").what


@pytest.mark.parametrize("args, text", [
    (["--listen", "unix:/tmp/x.sock", "--tls"], "--tls needs a TCP listen address"),
    (["--tls-name", "h"], "add --tls"),
    (["--listen", "ssl:9989:privateKey=k.pem", "--tls"], "already an ssl: string"),
])
def test_master_create_tls_mistakes_are_one_line(tmp_path, args, text):
    made = run_bbx("master", "create", tmp_path / "m", *args)
    assert made.returncode == 2 and made.stderr.count("\n") == 1 and text in made.stderr, made.stderr
    assert not (tmp_path / "m" / "master.key").exists()


# -- the CLI ------------------------------------------------------------------------------------

def test_the_cli_checks_the_master_pinning_its_own_certificate_in_the_masters_directory(
        tmp_path, ca, cleanup):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"])
    cleanup.append(master)
    assert master.endpoint.startswith("tls:host=127.0.0.1:port=")
    here = run_bbx("slaves", "--json", cwd=master.dir)
    assert here.returncode == 0, here.stderr
    assert [s["name"] for s in json.loads(here.stdout)] == ["s1"]

    user, password = master.admin
    remote = ["slaves", "--json", "--user", user, "--password", password]
    pin = tls.fingerprint_of_file(master.dir / "master.crt")
    ok = run_bbx(*remote, "--master", f"127.0.0.1:{master.port}", "--ca", master.dir / "master.crt")
    assert ok.returncode == 0, ok.stderr
    ok = run_bbx(*remote, "--master", f"localhost:{master.port}", "--fingerprint", pin)
    assert ok.returncode == 0, ok.stderr

    untrusted = run_bbx(*remote, "--master", f"tls:host=127.0.0.1:port={master.port}")
    assert untrusted.returncode == 6 and untrusted.stderr.count("\n") == 1
    assert "self-signed and not among the trusted CAs" in untrusted.stderr
    wrong = run_bbx(*remote, "--master", f"127.0.0.1:{master.port}", "--fingerprint", "AB" * 32)
    assert wrong.returncode == 6 and f"has SHA-256 fingerprint {pin}" in wrong.stderr
    other_ca = run_bbx(*remote, "--master", f"127.0.0.1:{master.port}", "--ca", ca.cert_path)
    assert other_ca.returncode == 6 and "not among the trusted CAs" in other_ca.stderr

    plain_ssl = run_bbx(*remote, "--master", f"ssl:host=127.0.0.1:port={master.port}")
    assert plain_ssl.returncode == 2 and "--insecure" in plain_ssl.stderr
    insecure = run_bbx(*remote, "--master", f"ssl:host=127.0.0.1:port={master.port}", "--insecure")
    assert insecure.returncode == 0, insecure.stderr


def test_a_slave_created_from_what_master_create_tls_printed_attaches(tmp_path, cleanup):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"])
    cleanup.append(master)
    shutil.copy(master.dir / "master.crt", tmp_path / "copied.crt")
    slave = create_slave(tmp_path / "s", f"localhost:{master.port}", "s1", "pw-s1",
                         "--use-tls", "--ca", tmp_path / "copied.crt")
    proc = start_slave(slave)
    cleanup.append(proc)
    proc.wait_for_output(ATTACHED, 30)
    listed = run_bbx("slaves", "--json", cwd=master.dir)
    assert json.loads(listed.stdout)[0]["connected"] is True


# -- a real buildbot-worker 4.3 -----------------------------------------------------------------

def _worker(tmp_path: Path, port: int, connection: str | None) -> Path:
    """A buildbot-worker basedir: with a connection string, else `--use-tls` host:port."""
    basedir = tmp_path / "w1"
    how = ["--connection-string", connection] if connection else ["--use-tls"]
    subprocess.run([WORKER, "create-worker", "-q", *how, str(basedir), f"127.0.0.1:{port}", "s1",
                    "pw-s1"], check=True, timeout=60, capture_output=True)
    return basedir


def _stop_worker(basedir: Path) -> None:
    subprocess.run([WORKER, "stop", str(basedir)], capture_output=True, timeout=30)


@pytest.mark.parametrize("how", ["trustRoots=", "--use-tls and SSL_CERT_FILE"])
def test_a_real_buildbot_worker_attaches_to_a_bbx_tls_master(tmp_path, cleanup, how):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"])
    cleanup.append(master)
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(master.dir / "master.crt", roots / "master.pem")
    env = dict(os.environ)
    if how == "trustRoots=":
        connection = f"tls:host=127.0.0.1:port={master.port}:trustRoots={roots}"
    else:  # --use-tls trusts the system's CAs; OpenSSL reads them from SSL_CERT_FILE if set
        connection = None
        env["SSL_CERT_FILE"] = str(roots / "master.pem")
    basedir = _worker(tmp_path, master.port, connection)
    try:
        started = subprocess.run([WORKER, "start", str(basedir)], capture_output=True, text=True,
                                 timeout=60, env=env)
        assert started.returncode == 0, started.stdout + (basedir / "twistd.log").read_text()
        wait_until(lambda: "slave s1 attached" in master.log(), 20, what="the worker attached")
    finally:
        _stop_worker(basedir)


def test_a_real_buildbot_worker_does_not_attach_to_a_master_it_does_not_trust(tmp_path, ca, cleanup):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"])
    cleanup.append(master)
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(ca.cert_path, roots / "ca.pem")  # a CA that did not sign the master's certificate
    basedir = _worker(tmp_path, master.port, f"tls:host=127.0.0.1:port={master.port}:trustRoots={roots}")
    proc = Proc([WORKER, "start", "--nodaemon", basedir], log_path=tmp_path / "worker.out")
    cleanup.append(proc)
    log = basedir / "twistd.log"
    # buildbot-worker 4.3 logs no reason for a refused handshake, only its retries.
    wait_until(lambda: log.exists() and log.read_text().count("Scheduling retry") >= 2, 30,
               what="the worker's retries")
    assert ATTACHED not in log.read_text()
    assert "slave s1 attached" not in master.log()


# -- the rules, as pure functions ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "ab" * 32, "AB" * 32, ":".join(["ab"] * 32), "SHA256:" + ":".join(["AB"] * 32),
    "sha256 Fingerprint=" + ":".join(["AB"] * 32), " ".join(["ab"] * 32),
])
def test_fingerprints_are_accepted_in_the_usual_spellings(text):
    assert tls.normalize_fingerprint(text) == ":".join(["AB"] * 32)


@pytest.mark.parametrize("description, trust, mode", [
    ("tcp:host=h:port=1", None, "plain"),
    ("unix:path=/x", None, "plain"),
    ("tls:host=h:port=1", None, "system"),
    ("tls:host=h:port=1", tls.TlsTrust(fingerprint="AB" * 32), "pin"),
    ("ssl:host=h:port=1", tls.TlsTrust(fingerprint="AB" * 32), "pin"),
    ("ssl:h:1", tls.TlsTrust(insecure=True), "insecure"),
])
def test_how_each_connection_string_is_checked(description, trust, mode):
    assert tls.check(description, trust) == mode


def test_an_ssl_string_with_nothing_to_check_against_is_refused():
    with pytest.raises(ValueError, match="would not check the master's certificate at all"):
        tls.check("ssl:host=h:port=1", None)
    with pytest.raises(ValueError, match="has no valid port"):
        tls.check("tls:host=h", None)


def test_the_master_logs_a_handshake_a_client_refused_but_not_a_bare_port_probe(tmp_path, ca,
                                                                               cleanup):
    master = TlsMaster(tmp_path / "m", create_args=["--tls"])
    cleanup.append(master)
    user, password = master.admin
    failed = "TLS handshake with 127.0.0.1 failed"
    with socket.create_connection(("127.0.0.1", master.port)):
        pass  # a port probe: no ClientHello, nothing to log
    refused = run_bbx("builders", "--master", f"127.0.0.1:{master.port}", "--ca", ca.cert_path,
                      "--user", user, "--password", password)
    assert refused.returncode == 6, refused.stderr
    wait_until(lambda: failed in master.log(), 20, what="the master's line for the handshake")
    lines = [ln for ln in master.log().splitlines() if failed in ln]
    assert len(lines) == 1, lines  # the bbx client, not the probe
    assert "the client hung up after receiving the certificate (it may not trust it)" in lines[0]
    with socket.create_connection(("127.0.0.1", master.port)) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        plain.recv(100)
    wait_until(lambda: "the client does not speak TLS" in master.log(), 20,
               what="the master's line for a client that speaks no TLS")
    assert "Traceback" not in master.log()


PROBE = """
import json, sys
from twisted.internet import defer, task
from bbx.pb import tls, tlsprobe

async def main(reactor, endpoint, ca, pin):
    trust = tls.TlsTrust(ca=ca or None, fingerprint=pin or None)
    found = await tlsprobe.inspect(reactor, endpoint, trust, 10)
    print(json.dumps({"mode": found.mode, "certificate": found.certificate,
                      "problem": found.problem and found.problem.__dict__,
                      "summary": tlsprobe.summary(found)}))

task.react(lambda reactor, *a: defer.ensureDeferred(main(reactor, *a)), sys.argv[1:])
"""


def _probe(endpoint: str, ca: str = "", pin: str = "") -> dict:
    out = subprocess.run([str(Path(BBX).parent / "python"), "-c", PROBE, endpoint, ca, pin],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_probe_shows_the_certificate_and_the_verdict_a_slave_would_give(tmp_path, ca, cleanup):
    issued = ca.issue("other", names=("other.example",))
    master = TlsMaster(tmp_path / "m", issued.key_path, issued.cert_path)
    cleanup.append(master)
    endpoint = f"tls:host=127.0.0.1:port={master.port}"
    mismatch = _probe(endpoint, ca=str(ca.cert_path))
    assert mismatch["mode"] == "ca"
    assert mismatch["certificate"]["san"] == ["DNS:other.example"]
    assert mismatch["certificate"]["fingerprint"] == issued.fingerprint
    assert mismatch["certificate"]["not_after"].endswith("UTC")
    assert mismatch["problem"]["what"] == "is for DNS:other.example, not 127.0.0.1"
    assert "does not list" in mismatch["problem"]["cause"]
    ok, detail, cause, fix = mismatch["summary"]
    assert not ok and detail.startswith("the master's certificate is for DNS:other.example")
    assert f"SHA-256 {issued.fingerprint}" in detail and cause and "reissue" in fix
    pinned = _probe(endpoint, pin=issued.fingerprint)
    assert pinned["mode"] == "pin" and pinned["problem"] is None
    assert pinned["summary"][0] and pinned["summary"][1].endswith("checked by the pinned fingerprint")
