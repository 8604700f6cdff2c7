"""RunProcess: argument handling (pure functions) and killing whole process trees (real children)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bbx.pb.secrets import is_secret_name
from bbx.slave.shellargs import build_environment, command_argv, environment_header, signal_number
from tests.support import alive, wait_until

DRIVER = Path(__file__).with_name("drive_command.py")
PY = sys.executable


# -- pure argument handling ------------------------------------------------------------------


def test_env_none_deletes_a_slave_variable():
    assert "HOME" not in build_environment({"HOME": None}, {"HOME": "/root", "A": "1"})


def test_env_list_is_joined_with_pathsep():
    assert build_environment({"P": ["/a", "/b"]}, {})["P"] == f"/a{os.pathsep}/b"


def test_env_references_expand_from_the_slave_environment_and_vanish_when_unset():
    env = build_environment({"X": "${HOME}/bin:${NOPE_UNSET}:${HOME}"}, {"HOME": "/h"})
    assert env["X"] == "/h/bin::/h"


def test_env_pythonpath_keeps_the_slaves_pythonpath_after_the_requested_one():
    env = build_environment({"PYTHONPATH": "/mine"}, {"PYTHONPATH": "/slave"})
    assert env["PYTHONPATH"] == f"/mine{os.pathsep}/slave"


def test_env_pythonpath_gets_no_empty_entry_when_the_slave_has_none():
    assert build_environment({"PYTHONPATH": "/mine"}, {})["PYTHONPATH"] == "/mine"


def test_env_non_string_value_is_refused():
    with pytest.raises(ValueError, match="'N'"):
        build_environment({"N": 3}, {})


def test_secret_looking_names_are_recognised_case_insensitively():
    for name in ("GITHUB_TOKEN", "my_secret", "PASSWORD", "db_passwd", "SSH_KEY", "AWS_CREDENTIALS"):
        assert is_secret_name(name), name
    for name in ("PATH", "HOME", "LANG"):
        assert not is_secret_name(name), name


def test_environment_header_is_sorted_and_masked():
    assert environment_header({"B": "2", "A_TOKEN": "t", "A": "1"}) == \
        " environment:\n  A=1\n  A_TOKEN=<redacted>\n  B=2\n"


def test_string_command_goes_to_bin_sh():
    argv, shown, display = command_argv("make && make test")
    assert argv == ["/bin/sh", "-c", "make && make test"]
    assert display == "make && make test"


def test_obfuscated_items_run_real_and_show_fake_in_tuples_or_lists():
    argv, shown, display = command_argv(["login", ("obfuscated", "pw", "XX"), ["obfuscated", "a b", "Y"], ""])
    assert argv == ["login", "pw", "a b", ""]
    assert shown == ["login", "XX", "Y", ""]
    assert display == 'login XX Y ""'


def test_empty_command_is_refused():
    with pytest.raises(ValueError):
        command_argv([])


def test_signal_names_numbers_and_sig_prefix_are_accepted():
    assert signal_number("KILL") == signal_number("SIGKILL") == signal_number(9) == signal.SIGKILL
    assert signal_number("term") == signal.SIGTERM
    with pytest.raises(ValueError, match="unknown signal"):
        signal_number("BOGUS")


# -- whole-tree killing, through the driver ---------------------------------------------------


def drive(tmp_path, args: dict, *extra: str, runner: list[str] | None = None, timeout: float = 40) -> dict:
    proc = subprocess.run(
        [*(runner or [PY, str(DRIVER)]), str(tmp_path / "builder"), "shell", json.dumps(args), *extra],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    updates = [tuple(line["update"]) for line in lines if "update" in line]
    done = [line["complete"] for line in lines if "complete" in line]
    assert done, f"driver did not finish:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return {
        "updates": updates,
        "failure": done[0],
        "rc": [v for k, v in updates if k == "rc"],
        "header": "".join(v for k, v in updates if k == "header"),
        "stdout": "".join(v for k, v in updates if k == "stdout"),
    }


def read_pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def reap():
    """Pids a test saw; killed at the end whatever happened, so no test leaks a sleeper."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# A grandchild that leaves the child's session (double fork + setsid), optionally cuts its
# ties to the child's output, writes its pid, and sleeps.
DAEMON = """
import os, sys, time
def daemon(pidfile, quiet, clear_env):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if quiet:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
            with open(pidfile, "a") as f:
                f.write(f"{os.getpid()}\\n")
            if clear_env:
                os.execve("/bin/sleep", ["sleep", "60"], {})
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    while not os.path.exists(pidfile):
        time.sleep(0.01)
"""


def write_prog(tmp_path, body: str) -> str:
    path = tmp_path / "prog.py"
    path.write_text(DAEMON + body)
    return str(path)


def test_interrupt_kills_a_grandchild_that_left_the_session_and_the_output(tmp_path, reap):
    pidfile = tmp_path / "daemon.pid"
    prog = write_prog(tmp_path, f"daemon({str(pidfile)!r}, quiet=True, clear_env=False)\n"
                                "print('ready', flush=True)\ntime.sleep(60)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, prog], "logEnviron": False},
                "--interrupt-on-output", "ready")
    reap.extend(read_pids(pidfile))
    assert run["rc"] == [-1]
    [daemon] = read_pids(pidfile)
    wait_until(lambda: not alive(daemon), timeout=5, what="the daemon to be dead")


def test_timeout_kills_the_whole_tree(tmp_path, reap):
    pidfile = tmp_path / "daemon.pid"
    prog = write_prog(tmp_path, f"daemon({str(pidfile)!r}, quiet=True, clear_env=False)\n"
                                "print('ready', flush=True)\ntime.sleep(60)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, prog], "logEnviron": False, "timeout": 1})
    reap.extend(read_pids(pidfile))
    assert run["rc"] == [-1]
    [daemon] = read_pids(pidfile)
    wait_until(lambda: not alive(daemon), timeout=5, what="the daemon to be dead")


def test_daemon_holding_stdout_does_not_hang_the_command_and_is_killed(tmp_path, reap):
    pidfile = tmp_path / "daemon.pid"
    prog = write_prog(tmp_path, f"daemon({str(pidfile)!r}, quiet=False, clear_env=False)\n"
                                "print('main done', flush=True)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, prog], "logEnviron": False}, timeout=20)
    reap.extend(read_pids(pidfile))
    assert run["rc"] == [0]
    assert run["failure"] is None
    assert "left processes holding its output open" in run["header"]
    [daemon] = read_pids(pidfile)
    wait_until(lambda: not alive(daemon), timeout=5, what="the daemon to be dead")


def test_daemon_with_a_cleared_environment_is_found_by_the_pipe_it_holds(tmp_path, reap):
    pidfile = tmp_path / "daemon.pid"
    prog = write_prog(tmp_path, f"daemon({str(pidfile)!r}, quiet=False, clear_env=True)\n"
                                "print('main done', flush=True)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, prog], "logEnviron": False}, timeout=20)
    reap.extend(read_pids(pidfile))
    assert run["rc"] == [0]
    [daemon] = read_pids(pidfile)
    wait_until(lambda: not alive(daemon), timeout=5, what="the daemon to be dead")


def test_background_job_finishing_within_the_grace_keeps_its_output(tmp_path):
    run = drive(tmp_path, {"workdir": "wd", "command": "(sleep 0.3; echo late) & echo early",
                           "logEnviron": False})
    assert run["stdout"] == "early\nlate\n"
    assert "left processes" not in run["header"]
    assert run["rc"] == [0]


def test_background_process_that_released_the_output_survives_a_normal_exit(tmp_path, reap):
    pidfile = tmp_path / "bg.pid"
    run = drive(tmp_path, {"workdir": "wd", "logEnviron": False,
                           "command": f"sleep 30 >/dev/null 2>&1 </dev/null & echo $! > {pidfile}"})
    reap.extend(read_pids(pidfile))
    assert run["rc"] == [0]
    [pid] = read_pids(pidfile)
    assert alive(pid)


def test_interrupt_leaves_nothing_of_a_tree_that_keeps_forking(tmp_path, reap):
    pidfile = tmp_path / "kids.pid"
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import os, time\n"
        f"pidfile = {str(pidfile)!r}\n"
        "for i in range(150):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        if i % 2: os.setsid()\n"
        "        time.sleep(60); os._exit(0)\n"
        "    with open(pidfile, 'a') as f: f.write(f'{pid}\\n')\n"
        "    if i == 20: print('ready', flush=True)\n"
        "    time.sleep(0.01)\n"
        "time.sleep(60)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, str(prog)], "logEnviron": False},
                "--interrupt-on-output", "ready")
    kids = read_pids(pidfile)
    reap.extend(kids)
    assert run["rc"] == [-1]
    assert len(kids) >= 20
    wait_until(lambda: not any(alive(p) for p in kids), timeout=5, what="every child to be dead")


def test_process_that_will_not_die_fails_the_command_after_the_backup_timeout(tmp_path, reap):
    # Stand-in for an unkillable process: the runner's signals are made to miss.
    runner = tmp_path / "no_kill.py"
    runner.write_text(
        "import runpy, sys\n"
        "import bbx.slave.runprocess as rp\n"
        "rp.ProcessTree.signal = lambda self, sig, **kw: {}\n"
        f"sys.argv = [{str(DRIVER)!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    pidfile = tmp_path / "child.pid"
    run = drive(tmp_path, {"workdir": "wd", "logEnviron": False,
                           "command": f"echo $$ > {pidfile}; echo ready; exec sleep 60"},
                "--interrupt-on-output", "ready", runner=[PY, str(runner)])
    reap.extend(read_pids(pidfile))
    assert "SIGKILL failed to kill process\n" in run["header"]
    assert "using fake rc=-1\n" in run["header"]
    assert run["rc"] == [-1]
    assert run["failure"] and "failed to kill" in run["failure"]


def test_after_sigterm_the_rest_of_the_tree_gets_sigterm_time_to_finish(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import os, signal, sys, time\n"
        "if os.fork() == 0:\n"
        "    def term(*a):\n"
        "        time.sleep(0.5); print('grandchild cleaned up', flush=True); os._exit(0)\n"
        "    signal.signal(signal.SIGTERM, term)\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60); os._exit(0)\n"
        "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
        "time.sleep(60)\n")
    run = drive(tmp_path, {"workdir": "wd", "command": [PY, str(prog)], "logEnviron": False, "sigtermTime": 10},
                "--interrupt-on-output", "ready")
    assert "grandchild cleaned up" in run["stdout"]
    assert run["rc"] == [-1]
