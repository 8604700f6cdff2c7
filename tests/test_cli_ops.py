"""bbx ping | info | slaves | builders | run, end to end against tests/fake_master.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bbx.cli import client
from bbx.cli.errors import UsageError
from bbx.cli.run import run_exit
from tests import fake_master
from tests.support import BBX, EXIT_DEADLINE, Proc, refused_port, run_bbx, wait_until

FAKE = Path(__file__).with_name("fake_master.py")
USER, PASSWORD = "admin", "sekrit"


def start_fake(tmp_path: Path, *extra: str) -> tuple[Proc, str]:
    log = tmp_path / f"fake-{len(list(tmp_path.glob('fake-*')))}.log"
    proc = Proc([sys.executable, FAKE, "--user", USER, "--password", PASSWORD, *extra], log_path=log)
    proc.wait_for_output("listening on ")
    endpoint = proc.output().split("listening on ", 1)[1].splitlines()[0].strip()
    return proc, endpoint


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    proc, endpoint = start_fake(tmp_path_factory.mktemp("fake"))
    yield proc, endpoint
    proc.terminate()


@pytest.fixture
def env(fake):
    return {"BBX_MASTER": fake[1], "BBX_USER": USER, "BBX_PASSWORD": PASSWORD}


def bbx_bytes(*args, env, timeout=30):
    """Run bbx with stdout and stderr as pipes, returning bytes (not text)."""
    full = dict(os.environ, COLUMNS="200", NO_COLOR="1", **env)
    full.pop("BBX_MASTER_DIR", None)
    return subprocess.run([BBX, *args], env=full, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------- ping


def test_ping_prints_each_rtt_and_a_summary(env):
    result = run_bbx("ping", "b", "--count", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert "reply 3:" in result.stdout and "min 1.20 / avg 1.30 / max 1.40 ms" in result.stdout


def test_ping_of_an_unknown_builder_names_the_choices_and_fails(env):
    result = run_bbx("ping", "nope", env=env)
    assert result.returncode == 5  # not found
    assert one_line(result.stderr) == "bbx: no builder named 'nope' (builders: b, idle, slow)"


def test_ping_of_a_builder_without_slave_says_so(env):
    result = run_bbx("ping", "idle", env=env)
    assert result.returncode == 1
    assert "is attached" in one_line(result.stderr)


def test_ping_json_parses(env):
    result = run_bbx("ping", "b", "--json", env=env)
    assert json.loads(result.stdout)["slave"] == "local"


# ---------------------------------------------------------------------------- info, lists


def test_info_masks_secret_environment_values(env):
    result = run_bbx("info", env=env)
    assert result.returncode == 0, result.stderr
    assert "GITHUB_TOKEN" in result.stdout and "********" in result.stdout
    assert "ghp_verysecret" not in result.stdout and "hunter2" not in result.stdout
    assert "/usr/bin:/bin" in result.stdout and "Ops <ops@example.org>" in result.stdout


def test_info_show_secrets_shows_them(env):
    result = run_bbx("info", "local", "--show-secrets", env=env)
    assert "ghp_verysecret" in result.stdout and "hunter2" in result.stdout


def test_info_json_is_masked_too(env):
    answer = json.loads(run_bbx("info", "--json", env=env).stdout)
    assert answer["info"]["environ"]["GITHUB_TOKEN"] == "********"
    assert answer["info"]["environ"]["LANG"] == "C.UTF-8"
    shown = json.loads(run_bbx("info", "--json", "--show-secrets", env=env).stdout)
    assert shown["info"]["environ"]["GITHUB_TOKEN"] == "ghp_verysecret"


def test_info_of_an_unknown_slave_is_one_line(env):
    result = run_bbx("info", "ghost", env=env)
    assert result.returncode == 5 and "no slave named 'ghost'" in one_line(result.stderr)


def test_slaves_lists_connected_and_disconnected(env):
    result = run_bbx("slaves", env=env)
    # Into a pipe: plain columns (render.slaves_table draws the terminal's table).
    local = next(line for line in result.stdout.splitlines() if "local" in line)
    lonely = next(line for line in result.stdout.splitlines() if "lonely" in line)
    # The state column says "-" for a master too old to report one (this fake one).
    assert local.split()[:5] == ["local", "yes", "-", "3m", "ago"] and "b,slow" in local
    assert lonely.split()[:3] == ["lonely", "no", "-"]


def test_slaves_and_builders_json_parse(env):
    assert [s["name"] for s in json.loads(run_bbx("slaves", "--json", env=env).stdout)] == ["local", "lonely"]
    assert json.loads(run_bbx("builders", "--json", env=env).stdout)[1]["attached"] == []


def test_builders_table(env):
    out = run_bbx("builders", env=env).stdout
    assert "idle" in out and "lonely" in out and "none" in out


# ---------------------------------------------------------------------------- run


def test_run_exits_with_the_commands_rc_and_passes_stdout_byte_for_byte(env):
    result = bbx_bytes("run", "b", "--", "make", "-j4", env=env)
    assert result.returncode == fake_master.RUN_RC, result.stderr
    assert result.stdout == fake_master.RUN_STDOUT.encode("utf-8")
    stderr = result.stderr.decode()
    assert fake_master.RUN_STDERR in stderr
    assert "exit code 3" in stderr


def test_run_masks_secrets_in_the_command_header_unless_asked(env):
    masked = bbx_bytes("run", "b", "--", "make", env=env).stderr.decode()
    assert "GITHUB_TOKEN=********" in masked and "ghp_verysecret" not in masked and "LANG=C" in masked
    shown = bbx_bytes("run", "b", "--show-secrets", "--", "make", env=env).stderr.decode()
    assert "GITHUB_TOKEN=ghp_verysecret" in shown


def test_run_sends_argv_workdir_and_env(fake, env):
    proc, _ = fake
    run_bbx("run", "b", "--workdir", "src", "--env", "CC=clang", "--", "make", "-k", env=env)
    wait_until(lambda: "run: ['make', '-k'] workdir='src' env={'CC': 'clang'}" in proc.output(),
               5, what="the run call")


def test_run_shell_sends_one_string(fake, env):
    proc, _ = fake
    run_bbx("run", "b", "--shell", "--", "make && make check", env=env)
    wait_until(lambda: "run: 'make && make check'" in proc.output(), 5, what="the shell run call")


def test_run_json_prints_one_object_per_update_then_the_result(env):
    result = run_bbx("run", "b", "--json", "--", "make", env=env)
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert "".join(o.get("stdout", "") for o in objects) == fake_master.RUN_STDOUT
    assert objects[-1]["exit_code"] == 3 and objects[-1]["result"]["rc"] == 3
    assert result.returncode == 3


def test_run_on_a_builder_without_slave_is_one_line(env):
    result = run_bbx("run", "idle", "--", "make", env=env)
    assert result.returncode == 1 and "is attached" in one_line(result.stderr)


def test_run_that_loses_its_slave_exits_255_and_says_why(env):
    result = run_bbx("run", "b", "--", "lose", env=env)
    assert result.returncode == 255
    assert "lost the connection to slave local" in result.stderr


def test_run_bad_env_is_a_usage_error(env):
    result = run_bbx("run", "b", "--env", "NOEQUALS", "--", "make", env=env)
    assert result.returncode == 2 and "is not K=V" in one_line(result.stderr)


def _start_run(tmp_path, env, *command):
    out, err = open(tmp_path / "out", "wb"), open(tmp_path / "err", "wb")
    full = dict(os.environ, NO_COLOR="1", **env)
    full.pop("BBX_MASTER_DIR", None)
    popen = subprocess.Popen([BBX, "run", "b", "--", *command], env=full, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
    out.close(), err.close()
    return popen


def test_ctrl_c_interrupts_the_command_and_exits_130_after_it_completes(fake, env, tmp_path):
    proc, _ = fake
    before = proc.output().count("interrupt: interrupted by operator")
    popen = _start_run(tmp_path, env, "sleep", "100")
    try:
        wait_until(lambda: (tmp_path / "out").read_bytes() == b"started\n", 20, what="run started")
        popen.send_signal(signal.SIGINT)
        assert popen.wait(EXIT_DEADLINE) == 130
    finally:
        popen.kill()
    assert proc.output().count("interrupt: interrupted by operator") == before + 1
    stderr = (tmp_path / "err").read_text()
    assert "killing: interrupted by operator" in stderr and "Traceback" not in stderr


def test_second_ctrl_c_kills_at_once_and_a_third_leaves_without_waiting(fake, env, tmp_path):
    proc, _ = fake
    popen = _start_run(tmp_path, env, "stubborn")
    try:
        wait_until(lambda: (tmp_path / "out").read_bytes() == b"started\n", 20, what="run started")
        popen.send_signal(signal.SIGINT)
        wait_until(lambda: "Ctrl-C again to kill" in (tmp_path / "err").read_text(), 10,
                   what="first Ctrl-C noted")
        popen.send_signal(signal.SIGINT)
        wait_until(lambda: "Ctrl-C again to leave" in (tmp_path / "err").read_text(), 10,
                   what="second Ctrl-C noted")
        wait_until(lambda: "interrupt: interrupted by operator (now)" in proc.output(), 10,
                   what="the kill-at-once interrupt")
        assert popen.poll() is None  # still waiting for the command's end
        popen.send_signal(signal.SIGINT)
        assert popen.wait(EXIT_DEADLINE) == 130
    finally:
        popen.kill()
    assert "left without waiting" in (tmp_path / "err").read_text()


@pytest.mark.parametrize("result, reason, expected", [
    ({"rc": 0}, None, 0),
    ({"rc": 2}, None, 2),
    ({"rc": -1}, "timeout_without_output", 124),
    ({"rc": -1}, "timeout", 124),
    ({"rc": -1, "interrupted": True}, None, 137),
    ({"rc": None, "failure": "command could not run: no such file"}, None, 1),
    ({"rc": None, "lost": True, "failure": "lost the connection to slave s"}, None, 255),
    ({"master_lost": True}, None, 255),
    ({"rc": 300}, None, 1),
])
def test_run_exit_codes(result, reason, expected):
    code, message = run_exit(result, failure_reason=reason, operator_interrupted=False, pipe_closed=False)
    assert code == expected and message and "\n" not in message


def test_run_exit_after_ctrl_c_is_130():
    assert run_exit({"rc": -1, "interrupted": True}, failure_reason=None, operator_interrupted=True,
                    pipe_closed=False)[0] == 130


# ---------------------------------------------------------------------------- reaching the master


def free_port() -> int:
    # Held bound until the process ends: no parallel test's master can be given it.
    return refused_port()


def test_unreachable_master_is_one_line_and_exit_3():
    endpoint = f"tcp:host=127.0.0.1:port={free_port()}"
    result = run_bbx("ping", "b", "--master", endpoint, "--user", USER, "--password", PASSWORD)
    assert result.returncode == 3
    assert one_line(result.stderr) == (
        f"bbx: cannot reach the master at {endpoint} (connection refused); is it running? "
        "(bbx master start DIR)")


def test_wrong_password_is_refused_with_exit_4(env):
    result = run_bbx("slaves", env={**env, "BBX_PASSWORD": "wrong"})
    assert result.returncode == 4 and "refused the login" in one_line(result.stderr)


def write_master_dir(path: Path, listen: str, endpoint: str | None = None) -> Path:
    path.mkdir(exist_ok=True)
    (path / "master.toml").write_text(
        f'[master]\nlisten = "{listen}"\n\n[control]\n'
        f'users = [{{ name = "{USER}", password = "{PASSWORD}" }}]\n')
    if endpoint:
        (path / "master.endpoint").write_text(endpoint + "\n")
    return path


def test_master_dir_reads_credentials_and_prefers_master_endpoint(fake, tmp_path):
    # The listen string names a port nobody uses: only master.endpoint leads to the master.
    mdir = write_master_dir(tmp_path / "m", f"tcp:{free_port()}:interface=127.0.0.1", fake[1])
    result = run_bbx("ping", "b", "--master-dir", mdir)
    assert result.returncode == 0, result.stderr


def test_no_flags_needed_in_the_masters_directory(fake, tmp_path):
    mdir = write_master_dir(tmp_path / "m", "tcp:0", fake[1])
    result = run_bbx("slaves", "--json", cwd=mdir)
    assert result.returncode == 0, result.stderr


def test_master_dir_env_var(fake, tmp_path):
    mdir = write_master_dir(tmp_path / "m", "tcp:0", fake[1])
    assert run_bbx("builders", env={"BBX_MASTER_DIR": str(mdir)}).returncode == 0


def test_master_dir_without_endpoint_file_uses_the_listen_string(tmp_path):
    sockdir = Path(tempfile.mkdtemp(prefix="bbx-", dir="/tmp"))  # short: unix paths are limited
    listen = f"unix:address={sockdir}/master.sock"
    proc, _ = start_fake(tmp_path, "--listen", listen)
    try:
        result = run_bbx("ping", "b", "--master-dir", write_master_dir(tmp_path / "m", listen))
        assert result.returncode == 0, result.stderr
    finally:
        proc.terminate()
        (sockdir / "master.sock").unlink(missing_ok=True)
        sockdir.rmdir()


def test_missing_master_toml_is_one_clear_line(tmp_path):
    result = run_bbx("ping", "b", "--master-dir", tmp_path)
    assert result.returncode == 2
    assert f"no master.toml in {tmp_path}" in one_line(result.stderr)


def test_broken_master_toml_names_file_and_line(tmp_path):
    (tmp_path / "master.toml").write_text('[master]\nlisten = "tcp:0"\n[control\n')
    result = run_bbx("ping", "b", "--master-dir", tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(tmp_path / "master.toml") in line and "line 3" in line


def test_no_master_at_all_says_how_to_name_one(tmp_path):
    result = run_bbx("ping", "b", cwd=tmp_path, env={"BBX_MASTER": "", "BBX_PASSWORD": ""})
    assert result.returncode == 2 and "--master-dir" in one_line(result.stderr)


@pytest.mark.parametrize("listen, expected", [
    ("tcp:9989", "tcp:host=127.0.0.1:port=9989"),
    ("tcp:9989:interface=0.0.0.0", "tcp:host=127.0.0.1:port=9989"),
    ("tcp:port=1234:interface=10.0.0.5", "tcp:host=10.0.0.5:port=1234"),
    (r"tcp6:9989:interface=\:\:", r"tcp:host=\:\:1:port=9989"),
    ("unix:/run/bbx.sock", "unix:path=/run/bbx.sock"),
    ("unix:address=/run/bbx.sock:mode=600", "unix:path=/run/bbx.sock"),
    ("ssl:9990:privateKey=k.pem:interface=m.example.org", "tls:host=m.example.org:port=9990"),
])
def test_client_endpoint_for_listen_string(listen, expected):
    assert client.client_for_listen(listen) == expected


def test_master_flag_accepts_host_port_and_full_endpoints():
    options = client.ConnOptions(master="build.example.org:1234", user="u", password="p")
    assert client.resolve(options).endpoint == "tcp:host=build.example.org:port=1234"
    options = client.ConnOptions(master="unix:path=/x.sock", user="u", password="p")
    assert client.resolve(options).endpoint == "unix:path=/x.sock"
    with pytest.raises(UsageError):
        client.resolve(client.ConnOptions(master="h:notaport", user="u", password="p"))


def test_ctrl_c_while_waiting_for_the_master_is_one_line_and_exit_130(tmp_path):
    # A listening socket that never answers PB: the login waits until we press Ctrl-C.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent.settimeout(20)
        endpoint = f"tcp:host=127.0.0.1:port={silent.getsockname()[1]}"
        err = tmp_path / "err"
        with open(err, "wb") as err_file:
            popen = subprocess.Popen([BBX, "ping", "b", "--master", endpoint, "--user", "u",
                                      "--password", "p"], stdout=subprocess.DEVNULL, stderr=err_file,
                                     stdin=subprocess.DEVNULL)
        try:
            conn, _ = silent.accept()  # bbx connected and is now waiting inside the reactor
            with conn:
                popen.send_signal(signal.SIGINT)
                assert popen.wait(EXIT_DEADLINE) == 130
        finally:
            popen.kill()
    assert one_line(err.read_text()) == "bbx: interrupted"


def test_run_on_a_terminal_shows_output_and_stderr_in_red(env):
    import pty

    controller, terminal = pty.openpty()
    full = dict(os.environ, COLUMNS="100", TERM="xterm", **env)
    for name in ("NO_COLOR", "BBX_MASTER_DIR"):
        full.pop(name, None)
    popen = subprocess.Popen([BBX, "run", "b", "--", "make"], env=full, stdin=subprocess.DEVNULL,
                             stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
        assert popen.wait(EXIT_DEADLINE) == fake_master.RUN_RC
    finally:
        popen.kill()
        os.close(controller)
    text = seen.decode("utf-8", "replace")
    assert "héllo wörld ✓" in text and "tail without newline" in text
    assert "\x1b[31mwarning: something odd" in text
    assert "exit 3" in text


def test_slaves_filters_and_counts(env):
    up = json.loads(run_bbx("slaves", "--connected", "--json", env=env).stdout)
    down = json.loads(run_bbx("slaves", "--disconnected", "--json", env=env).stdout)
    assert [s["name"] for s in up] == ["local"] and [s["name"] for s in down] == ["lonely"]
    assert json.loads(run_bbx("slaves", "--count", "--json", env=env).stdout) == {
        "configured": 2, "connected": 1, "disconnected": 1}
    text = run_bbx("slaves", "--disconnected", env=env).stdout
    assert "lonely" in text and "local " not in text
    assert text.strip().endswith("2 configured: 1 connected, 1 disconnected")
    both = run_bbx("slaves", "--connected", "--disconnected", env=env)
    assert both.returncode == 2 and "exclude each other" in both.stderr
