"""The `shell` command as a master sees it: real children, updates read from tests/drive_command.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).with_name("drive_command.py")
PY = sys.executable


class Run:
    """What one driven command reported."""

    def __init__(self, lines: list[dict]) -> None:
        self.lines = lines
        self.updates = [tuple(line["update"]) for line in lines if "update" in line]
        done = [line for line in lines if "complete" in line]
        self.finished = bool(done)
        self.failure = done[0]["complete"] if done else None
        refused = [line["refused"] for line in lines if "refused" in line]
        self.refused = refused[0] if refused else None

    def text(self, key: str) -> str:
        return "".join(v for k, v in self.updates if k == key)

    def values(self, key: str) -> list:
        return [v for k, v in self.updates if k == key]

    def keys(self) -> list[str]:
        """Update keys in order, consecutive repeats folded."""
        out: list[str] = []
        for k, _ in self.updates:
            if not out or out[-1] != k:
                out.append(k)
        return out

    @property
    def rc(self):
        rcs = self.values("rc")
        return rcs[-1] if rcs else None


def drive(tmp_path, args: dict, *extra: str, env: dict | None = None, timeout: float = 30) -> Run:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [PY, str(DRIVER), str(tmp_path / "builder"), "shell", json.dumps(args), *extra],
        capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    run = Run(lines)
    assert run.finished or run.refused, f"driver did not finish:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return run


def script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def shell(command, **more) -> dict:
    return {"workdir": "wd", "command": command, "logEnviron": False, **more}


def test_list_command_is_executed_without_a_shell(tmp_path):
    run = drive(tmp_path, shell(["echo", "$HOME", "a  b"]))
    assert run.text("stdout") == "$HOME a  b\n"
    assert run.rc == 0
    assert " argv: ['echo', '$HOME', 'a  b']\n" in run.text("header")


def test_string_command_runs_through_bin_sh(tmp_path):
    run = drive(tmp_path, shell("echo one; echo two | tr a-z A-Z"))
    assert run.text("stdout") == "one\nTWO\n"
    assert run.text("header").startswith("echo one; echo two | tr a-z A-Z\n")


def test_obfuscated_argument_runs_real_value_and_shows_fake(tmp_path):
    out = tmp_path / "builder" / "wd" / "seen"
    run = drive(tmp_path, shell(["sh", "-c", f'echo "$1" > {out}; echo "$1"', "sh",
                                 ["obfuscated", "s3cr3t", "XXXX"]]))
    assert out.read_text() == "s3cr3t\n"  # the real word ran...
    assert run.text("stdout") == "<redacted>\n"  # ...and is a secret in the output
    assert "s3cr3t" not in run.text("header")
    assert run.text("header").startswith("sh -c")
    assert " XXXX\n" in run.text("header")


def test_headers_come_first_in_worker_order_then_rc_elapsed(tmp_path):
    run = drive(tmp_path, {"workdir": "wd", "command": ["echo", "x"], "timeout": 1200, "maxTime": 60,
                           "logfiles": {"l": "l.log"}, "initial_stdin": "abc"})
    header = run.text("header")
    wd = str(tmp_path / "builder" / "wd")
    expected_order = ["echo x\n", f" in dir {wd} (timeout 1200 secs) (maxTime 60 secs)\n",
                      " watching logfiles {'l': 'l.log'}\n", " argv: ['echo', 'x']\n", " environment:\n",
                      " writing 3 bytes to stdin\n", " using PTY: False\n"]
    positions = [header.index(part) for part in expected_order]
    assert positions == sorted(positions)
    assert [k for k, _ in run.updates][-3:] == ["rc", "header", "elapsed"]
    assert run.values("header")[-1].startswith("elapsedTime=")


def test_env_none_deletes_list_joins_and_vars_expand(tmp_path):
    env = {"GONE": None, "JOINED": ["/a", "/b"], "EXPANDED": "x-${BBX_TEST_FROM_SLAVE}-y"}
    run = drive(tmp_path, shell([PY, "-c", "import os; print(os.environ.get('GONE')); "
                                 "print(os.environ['JOINED']); print(os.environ['EXPANDED'])"], env=env),
                env={"GONE": "here", "BBX_TEST_FROM_SLAVE": "slaveval"})
    assert run.text("stdout") == f"None\n/a{os.pathsep}/b\nx-slaveval-y\n"


def test_pwd_is_the_workdir(tmp_path):
    run = drive(tmp_path, shell("echo $PWD; pwd"))
    wd = str(tmp_path / "builder" / "wd")
    assert run.text("stdout") == f"{wd}\n{wd}\n"


def test_workdir_is_created_when_missing(tmp_path):
    run = drive(tmp_path, {"workdir": "deep/er/wd", "command": ["pwd"], "logEnviron": False})
    assert (tmp_path / "builder" / "deep" / "er" / "wd").is_dir()
    assert run.rc == 0


def test_uncreatable_workdir_fails_the_command_with_a_clear_header(tmp_path):
    (tmp_path / "builder").mkdir()
    (tmp_path / "builder" / "afile").write_text("not a dir")
    run = drive(tmp_path, {"workdir": "afile/wd", "command": ["true"]})
    assert run.failure and "cannot create workdir" in run.failure
    assert "cannot create workdir" in run.text("header")
    assert run.values("rc") == []


def test_missing_program_reports_not_found_and_rc_127(tmp_path):
    run = drive(tmp_path, shell(["bbx-no-such-program-xyz", "arg"]))
    assert run.rc == 127
    assert "bbx-no-such-program-xyz: command not found" in run.text("header")
    assert run.failure is None


def test_stdout_and_stderr_stay_separate(tmp_path):
    run = drive(tmp_path, shell("echo out; echo err >&2; echo out2"))
    assert run.text("stdout") == "out\nout2\n"
    assert run.text("stderr") == "err\n"


def test_output_arrives_byte_exact_with_cr_empty_lines_and_no_final_newline(tmp_path):
    prog = script(tmp_path, "p.py", "import sys\nsys.stdout.write('a\\r\\n\\n\\nprogress 1\\rprogress 2\\rdone')\n")
    run = drive(tmp_path, shell([PY, prog]))
    assert run.text("stdout") == "a\r\n\n\nprogress 1\rprogress 2\rdone"


def test_utf8_character_split_across_writes_comes_out_whole(tmp_path):
    prog = script(tmp_path, "p.py", (
        "import os, time\n"
        "e = 'é'.encode()\n"
        "os.write(1, b'caf' + e[:1]); time.sleep(0.3); os.write(1, e[1:] + b'!\\n')\n"))
    run = drive(tmp_path, shell([PY, prog]))
    assert run.text("stdout") == "café!\n"


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    prog = script(tmp_path, "p.py", "import os\nos.write(1, b'ok\\xff\\xfe\\x00end\\n')\n")
    run = drive(tmp_path, shell([PY, prog]))
    assert run.text("stdout") == "ok\ufffd\ufffd\x00end\n"
    assert run.rc == 0


def test_ten_megabytes_on_one_line_arrive_complete(tmp_path):
    run = drive(tmp_path, shell([PY, "-c", "import sys; sys.stdout.write('x' * 10_000_000)"]), timeout=60)
    out = run.text("stdout")
    assert len(out) == 10_000_000 and set(out) == {"x"}
    assert max(len(v) for v in run.values("stdout")) <= 64 * 1024


def test_nonzero_exit_is_the_rc(tmp_path):
    run = drive(tmp_path, shell("exit 42"))
    assert run.rc == 42
    assert run.values("failure_reason") == []


def test_want_stdout_false_drops_stdout_only(tmp_path):
    run = drive(tmp_path, shell("echo out; echo err >&2", want_stdout=False))
    assert run.text("stdout") == ""
    assert run.text("stderr") == "err\n"


def test_silence_timeout_kills_with_timeout_without_output(tmp_path):
    run = drive(tmp_path, shell("echo start; sleep 30", timeout=1))
    assert run.values("failure_reason") == ["timeout_without_output"]
    assert "command timed out: 1 seconds without output" in run.text("header")
    assert run.rc == -1
    keys = [k for k, _ in run.updates]
    assert keys.index("failure_reason") < keys.index("rc")
    assert "elapsed" in keys  # a timeout is not an interrupt


def test_output_keeps_the_silence_timeout_away(tmp_path):
    run = drive(tmp_path, shell("for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done", timeout=1))
    assert run.rc == 0
    assert run.values("failure_reason") == []


def test_max_time_kills_with_timeout(tmp_path):
    run = drive(tmp_path, shell("while true; do echo tick; sleep 0.2; done", maxTime=1))
    assert run.values("failure_reason") == ["timeout"]
    assert "command timed out: 1 seconds elapsed" in run.text("header")
    assert run.rc == -1


def test_max_lines_exceeded_kills_with_max_lines_failure(tmp_path):
    run = drive(tmp_path, shell("i=0; while true; do i=$((i+1)); echo line $i; done", max_lines=100))
    assert run.values("failure_reason") == ["max_lines_failure"]
    assert "command exceeds max lines" in run.text("header")
    assert run.rc == -1


def test_interrupt_kills_at_once_reports_rc_minus_one_and_no_elapsed(tmp_path):
    run = drive(tmp_path, shell("echo ready; sleep 30"), "--interrupt-on-output", "ready")
    assert "command interrupted" in run.text("header")
    assert "process killed by signal 9" in run.text("header")
    assert run.rc == -1
    assert run.values("elapsed") == []
    assert run.values("header")[-1].startswith("elapsedTime=")


def test_interrupt_with_sigterm_time_sends_sigterm_first(tmp_path):
    prog = script(tmp_path, "p.py", (
        "import signal, sys, time\n"
        "def term(*a):\n    print('got TERM', flush=True); sys.exit(5)\n"
        "signal.signal(signal.SIGTERM, term)\nprint('ready', flush=True)\ntime.sleep(30)\n"))
    run = drive(tmp_path, shell([PY, prog], sigtermTime=5), "--interrupt-on-output", "ready")
    assert "got TERM" in run.text("stdout")
    assert "process killed by signal" not in run.text("header")
    assert run.rc == -1
    assert run.values("elapsed") == []


def test_child_ignoring_sigterm_dies_by_interrupt_signal(tmp_path):
    prog = script(tmp_path, "p.py", (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(30)\n"))
    run = drive(tmp_path, shell([PY, prog], sigtermTime=0.5, interruptSignal="KILL"),
                "--interrupt-on-output", "ready")
    assert "process killed by signal 9" in run.text("header")
    assert run.rc == -1


def test_interrupt_signal_is_honoured(tmp_path):
    run = drive(tmp_path, shell("echo ready; exec sleep 30", interruptSignal="INT"),
                "--interrupt-on-output", "ready")
    assert "process killed by signal 2" in run.text("header")


def test_initial_stdin_is_written_then_closed(tmp_path):
    run = drive(tmp_path, shell(["cat"], initial_stdin="hello\nworld"))
    assert run.text("stdout") == "hello\nworld"
    assert " writing 11 bytes to stdin\n" in run.text("header")


def test_stdin_is_closed_when_none_given(tmp_path):
    run = drive(tmp_path, shell(["cat"]), timeout=20)
    assert run.text("stdout") == ""
    assert run.rc == 0


def test_use_pty_true_runs_on_a_terminal(tmp_path):
    run = drive(tmp_path, shell([PY, "-c", "import os,sys; print(os.isatty(1), os.isatty(0))"], usePTY=True))
    assert run.text("stdout").strip() == "True True"
    assert " using PTY: True\n" in run.text("header")
    assert run.rc == 0


def test_initial_stdin_disables_the_pty(tmp_path):
    run = drive(tmp_path, shell(["cat"], usePTY=True, initial_stdin="x"))
    assert "WARNING: disabling usePTY" in run.text("header")
    assert run.text("stdout") == "x"


def test_followed_logfile_is_sent_as_log_updates(tmp_path):
    wd = tmp_path / "builder" / "wd"
    wd.mkdir(parents=True)
    (wd / "build.log").write_text("old content\n")
    prog = script(tmp_path, "p.py", (
        "import time\n"
        "with open('build.log', 'a') as f:\n"
        "    f.write('first\\n'); f.flush(); time.sleep(0.7); f.write('second\\n')\n"))
    run = drive(tmp_path, shell([PY, prog], logfiles={"build": {"filename": "build.log", "follow": True}}))
    logs = run.values("log")
    assert {name for name, _ in logs} == {"build"}
    assert "".join(text for _, text in logs) == "first\nsecond\n"


def test_plain_logfile_is_sent_whole_once_written(tmp_path):
    run = drive(tmp_path, shell("echo one > out.txt; echo two >> out.txt", logfiles={"out": "out.txt"}))
    assert "".join(text for _, text in run.values("log")) == "one\ntwo\n"


def test_log_environ_false_omits_the_environment_header(tmp_path):
    run = drive(tmp_path, shell(["true"], logEnviron=False))
    assert "environment:" not in run.text("header")


def test_environment_header_masks_secret_looking_values(tmp_path):
    run = drive(tmp_path, {"workdir": "wd", "command": ["true"],
                           "env": {"API_TOKEN": "tok123", "db_password": "pw456", "AWS_SECRET_ACCESS_KEY": "k",
                                   "PLAIN": "visible"}})
    header = run.text("header")
    assert "  API_TOKEN=<redacted>\n" in header
    assert "  db_password=<redacted>\n" in header
    assert "  AWS_SECRET_ACCESS_KEY=<redacted>\n" in header
    assert "  PLAIN=visible\n" in header
    assert "tok123" not in header and "pw456" not in header


def test_unknown_interrupt_signal_is_refused_at_start(tmp_path):
    run = drive(tmp_path, {"workdir": "wd", "command": ["true"], "interruptSignal": "NOPE"})
    assert run.refused and "unknown signal" in run.refused


def test_missing_required_argument_is_refused(tmp_path):
    run = drive(tmp_path, {"workdir": "wd"})
    assert run.refused and "command" in run.refused


def test_slave_config_use_pty_means_no_pty(tmp_path):
    run = drive(tmp_path, shell([PY, "-c", "import os; print(os.isatty(1))"], usePTY="slave-config"))
    assert run.text("stdout") == "False\n"
