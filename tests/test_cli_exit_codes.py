"""One exit-code table: the README's is the code's; --json errors; --version; no hang."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from bbx.cli import errors
from tests.support import run_bbx

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> dict[int, str]:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2].strip() for m in re.finditer(r"^\| (\d+) \| (.*) \|$", section, re.M)}


def test_the_readme_table_is_the_codes_table():
    assert readme_table() == errors.EXIT_CODES


def test_each_code_has_its_class():
    assert errors.UsageError("x").exit_code == errors.EXIT_USAGE == 2
    assert errors.Unreachable("x").exit_code == errors.EXIT_UNREACHABLE == 3
    assert errors.Refused("x").exit_code == errors.EXIT_REFUSED == 4
    assert errors.NotFound("x").exit_code == errors.EXIT_NOT_FOUND == 5
    assert errors.Untrusted("x").exit_code == errors.EXIT_UNTRUSTED == 6
    assert errors.Interrupted().exit_code == errors.EXIT_INTERRUPTED == 130
    assert errors.control_exit_code("bbx.pb.control.UnknownBuilder") == 5
    assert errors.control_exit_code("bbx.pb.control.NoSteps") == 2
    assert errors.control_exit_code("bbx.pb.control.SlaveBusy") == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_under_json_are_one_object_on_stdout_and_one_line_on_stderr():
    port = closed_port()
    r = run_bbx("builders", "--json", "--master", f"127.0.0.1:{port}", "--user", "u", "--password", "p")
    assert r.returncode == 3
    answer = json.loads(r.stdout)
    assert answer["exit"] == 3 and "connection refused" in answer["error"]
    assert r.stderr.strip() == f"bbx: {answer['error']}"


def test_usage_errors_are_one_line_exit_2_also_under_json():
    r = run_bbx("ping", "b", "--count", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--count" in r.stderr and "Traceback" not in r.stderr
    r = run_bbx("slaves", "--json", "--bogus")
    assert r.returncode == 2 and json.loads(r.stdout)["exit"] == 2
    r = run_bbx("nosuchcommand")
    assert r.returncode == 2 and r.stderr.startswith("bbx: No such command")


def test_version_names_bbx_twisted_and_python():
    r = run_bbx("--version")
    assert r.returncode == 0 and re.fullmatch(r"bbx \S+ \(Twisted \S+, Python 3\.\d+\.\d+\)\n", r.stdout)
    assert set(json.loads(run_bbx("--version", "--json").stdout)) == {"bbx", "twisted", "python"}


@pytest.fixture
def silent_port():
    """Accepts TCP connections and never answers (a wrong port, a TLS port)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

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
    for c in held:
        c.close()
    server.close()


@pytest.mark.parametrize("argv", [
    ["ping", "b"], ["info"], ["slaves"], ["builders"], ["builds"], ["build", "b"],
    ["log", "1"], ["cancel", "1"], ["run", "b", "--connect-timeout", "1", "--", "true"],
])
def test_no_command_hangs_on_a_port_that_never_speaks_pb(argv, silent_port):
    env = {"BBX_MASTER": f"tcp:host=127.0.0.1:port={silent_port}", "BBX_USER": "u",
           "BBX_PASSWORD": "p", "BBX_TIMEOUT": "1"}
    started = time.monotonic()
    r = run_bbx(*argv, env=env, timeout=30)
    assert time.monotonic() - started < 10
    assert r.returncode == 3, r.stderr
    line = r.stderr.strip()
    assert "did not answer the PB login within 1 s (login)" in line and len(line.splitlines()) == 1
