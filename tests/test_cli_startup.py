"""The CLI starts fast: each command imports only what it needs (bench/cli.py measures it).

Parsing and --help import neither Twisted nor the roles nor rich; operator commands against a
tcp: master never import OpenSSL (Twisted's TLS) nor pydantic (typer's coercion of exotic
types); commands that print a few plain lines never import rich. Nothing the CLI runs imports
psycopg (the master's PostgreSQL driver), nor the standard library's HTTP client, which Twisted
drags in through http.cookiejar (bbx/cli/client.py defers it).
"""

from __future__ import annotations

import ast
import socket
import subprocess
import sys

import pytest

# Heavy modules and what brings them in (bench/cli.py --importtime shows their cost).
ROLES = ("bbx.master", "bbx.slave")
NEVER_FOR_TCP = ("OpenSSL", "cryptography", "pydantic")
# Never for an operator command, whatever the master's store: the CLI reads master.toml itself.
NEVER = ("psycopg", "psycopg_c", "psycopg_binary")
# What Twisted's `from http import cookiejar` would load at once (bbx/cli/client.py's
# _defer_cookiejar makes it wait for a first use, which the CLI never makes).
HTTP_CLIENT = ("urllib.request", "http.client", "email.parser", "email.feedparser")
# Command modules whose annotations typer must evaluate: under `from __future__ import
# annotations` it evals each one from a string, twice per command, for every command that
# --help lists (~75 M instructions, a sixth of `bbx --help`, measured with valgrind).
COMMAND_MODULES = ("bbx.cli", "bbx.cli.builds", "bbx.cli.completion", "bbx.cli.doctor",
                   "bbx.cli.farm", "bbx.cli.history", "bbx.cli.master", "bbx.cli.ops", "bbx.cli.roleopts",
                   "bbx.cli.run", "bbx.cli.slave")


def modules_after(argv: list[str], env: dict | None = None) -> set[str]:
    """The modules loaded by the time `bbx ARGV` exits, as the console script runs it."""
    # repr, not json: the probe must not load what a test says the CLI does not.
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.__stdout__.write('\\nMODULES ' + repr(sorted(sys.modules)) + '\\n'))\n"
             f"sys.argv = ['bbx', *{argv!r}]\n"
             "from bbx.cli import main\n"
             "main()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, timeout=60)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("MODULES "))
    return set(ast.literal_eval(line[len("MODULES "):]))


def loaded(modules: set[str], prefixes) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(tuple(prefixes)))


def test_importing_the_cli_loads_no_twisted_no_role_no_rich_no_pydantic():
    probe = ("import sys, bbx.cli; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('twisted', 'rich', 'pydantic', 'OpenSSL') or m.startswith(('bbx.master', 'bbx.slave'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["ping", "--help"]])
def test_help_and_version_into_a_pipe_load_no_twisted_and_no_rich(argv):
    modules = modules_after(argv)
    assert loaded(modules, ("twisted", "rich", "pydantic") + ROLES + NEVER) == []


def test_help_parses_no_toml_and_writes_no_json():
    assert sorted({"tomllib", "json"} & modules_after(["--help"])) == []


def test_command_modules_keep_their_annotations_evaluated():
    import __future__
    import importlib

    postponed = [name for name in COMMAND_MODULES
                 if getattr(importlib.import_module(name), "annotations", None)
                 is __future__.annotations]
    assert postponed == [], "typer would eval these modules' annotations from strings"


def test_version_does_not_build_every_command():
    assert not loaded(modules_after(["--version"]), ("bbx.cli.builds", "bbx.cli.run", "bbx.cli.master"))


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["endpoint", "host:port"])
@pytest.mark.parametrize("argv", [["ping", "b"], ["run", "b", "--", "true"], ["slaves", "--json"],
                                  ["doctor"]])
def test_operator_commands_on_tcp_load_no_tls_no_pydantic_no_role(argv, form, closed_port):
    master = (f"tcp:host=127.0.0.1:port={closed_port}" if form == "endpoint"
              else f"127.0.0.1:{closed_port}")
    env = {"BBX_MASTER": master, "BBX_USER": "u",
           "BBX_PASSWORD": "p", "PATH": "/usr/bin:/bin"}
    modules = modules_after(argv, env)
    assert "twisted.internet.reactor" in modules  # it did try to connect
    assert "bbx.pb.tls" in modules  # the TLS rules ran (and said: plain) without OpenSSL
    assert loaded(modules, NEVER_FOR_TCP + ROLES + NEVER) == []
    assert sorted(set(HTTP_CLIENT) & modules) == []


def test_an_operator_command_in_a_postgresql_masters_directory_loads_no_driver(tmp_path, closed_port):
    (tmp_path / "master.toml").write_text(
        '[master]\nlisten = "tcp:0:interface=127.0.0.1"\n'
        'db = "postgresql://bbx:pw@127.0.0.1/bbx"\n'
        '[control]\nusers = [{ name = "u", password = "p" }]\n')
    (tmp_path / "master.endpoint").write_text(f"tcp:host=127.0.0.1:port={closed_port}\n")
    env = {"BBX_MASTER_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for argv in (["ping", "b"], ["slaves"], ["run", "b", "--", "true"]):
        modules = modules_after(argv, env)
        assert "twisted.internet.reactor" in modules, argv  # it did read the directory and dial
        assert loaded(modules, NEVER + NEVER_FOR_TCP + ROLES) == [], argv


def test_an_operator_command_on_unix_loads_no_tls(tmp_path):
    env = {"BBX_MASTER": f"unix:path={tmp_path / 'no-master.sock'}", "BBX_USER": "u",
           "BBX_PASSWORD": "p", "PATH": "/usr/bin:/bin"}
    modules = modules_after(["builders", "--json"], env)
    assert "twisted.internet.reactor" in modules
    assert loaded(modules, NEVER_FOR_TCP + ROLES) == []


def test_a_tls_master_gets_twisteds_tls_and_the_certificate_checker(closed_port):
    env = {"BBX_MASTER": f"tls:host=127.0.0.1:port={closed_port}", "BBX_USER": "u",
           "BBX_PASSWORD": "p", "BBX_INSECURE": "1", "PATH": "/usr/bin:/bin"}
    modules = modules_after(["ping", "b"], env)
    assert {"OpenSSL", "bbx.pb.tlsclient"} <= modules


def test_ping_and_json_output_load_no_rich(closed_port):
    env = {"BBX_MASTER": f"tcp:host=127.0.0.1:port={closed_port}", "BBX_USER": "u",
           "BBX_PASSWORD": "p", "PATH": "/usr/bin:/bin"}
    for argv in (["ping", "b"], ["builders", "--json"], ["run", "b", "--", "true"]):
        assert loaded(modules_after(argv, env), ("rich",)) == [], argv
