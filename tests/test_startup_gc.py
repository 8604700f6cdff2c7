"""The console script keeps the cyclic collector off while it starts, and every process that goes
on to do work turns it back on before its reactor runs (bbx/startup.py)."""

from __future__ import annotations

import gc
import sys
from importlib import metadata

import pytest

from tests.support import Proc, refused_port, run_bbx

# Runs the console script's entry point, and says when (and how) the collector is resumed.
PROBE = """
import gc, sys
import bbx.startup as startup
real = startup.resume
def resume(**kw):
    real(**kw)
    print(f"RESUMED freeze={kw.get('freeze', True)} enabled={gc.isenabled()} "
          f"frozen={gc.get_freeze_count() > 0}", flush=True)
startup.resume = resume
sys.argv = ["bbx", *sys.argv[1:]]
startup.main()
"""


def probe(tmp_path, *argv, env=None) -> Proc:
    return Proc([sys.executable, "-c", PROBE, *argv], env=env, log_path=tmp_path / "probe.out")


def test_the_console_script_is_the_startup_entry_point():
    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "bbx"]
    assert script.value == "bbx.startup:main"


def test_an_operator_command_resumes_the_collector_before_it_dials(tmp_path):
    env = {"BBX_MASTER": f"tcp:host=127.0.0.1:port={refused_port()}", "BBX_USER": "u",
           "BBX_PASSWORD": "p"}
    proc = probe(tmp_path, "ping", "b", env=env)
    assert proc.popen.wait(60) == 3, proc.output()
    assert "RESUMED freeze=True enabled=True frozen=True" in proc.output()


def test_help_never_resumes_and_still_exits_cleanly(tmp_path):
    proc = probe(tmp_path, "--help")
    assert proc.popen.wait(60) == 0
    assert "Usage" in proc.output() and "RESUMED" not in proc.output()


@pytest.mark.parametrize("role", ["master", "slave"])
def test_the_daemons_resume_without_freezing_their_configuration(tmp_path, role):
    basedir = tmp_path / role
    if role == "master":
        create = ("master", "create", basedir, "--listen", "tcp:0:interface=127.0.0.1")
    else:
        create = ("slave", "create", basedir, f"127.0.0.1:{refused_port()}", "s1", "pw")
    created = run_bbx(*create)
    assert created.returncode == 0, created.stderr
    proc = probe(tmp_path, role, "start", basedir)
    try:
        proc.wait_for_output("RESUMED", timeout=60)
        assert "RESUMED freeze=False enabled=True frozen=False" in proc.output()
    finally:
        proc.terminate()


def test_resume_without_pause_leaves_the_collector_alone():
    from bbx import startup

    frozen = gc.get_freeze_count()
    startup.resume()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
