"""`bbx run` end to end: the real CLI, a real `bbx master start`, and on the far side either a
bbx slave (bbx <-> bbx) or a real buildbot-worker 4.3.0 (bbx master <-> Buildbot worker).

One master serves both: slave "s1" is a `bbx slave`, slave "w1" a buildbot-worker; each has a
builder of its own name, so the tests parametrized over SLAVE_KINDS just pick the builder.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.realworker import Master, Worker, make_master
from tests.support import BBX, Proc, run_bbx, wait_until

ATTACHED = "message from master: attached"
BBX_SLAVE = "s1"
REAL_WORKER = "w1"
SLAVE_KINDS = [pytest.param(BBX_SLAVE, id="bbx-slave"), pytest.param(REAL_WORKER, id="buildbot-worker")]

# The brief's bound for an interrupted `bbx run` to end (the CLI waits for the command's end).
INTERRUPT_DEADLINE = 10.0
# `bbx run` exit status after Ctrl-C (bbx run --help).
EXIT_INTERRUPTED = 130

# Output meant to survive byte for byte: a bare CR, CRLF, empty lines, 2-, 3- and 4-byte UTF-8
# characters, and no final newline.
AWKWARD = ("bare\rcarriage\r\nreturn\n\n\nempty lines above\n"
           "\u00e9t\u00e9 \u20ac \U0001F600 multi-byte\n\nno final newline").encode()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A bbx master with a bbx slave (builder s1) and a real buildbot-worker (builder w1)."""
    tmp = tmp_path_factory.mktemp("interop-run")
    make_master(tmp / "m", slaves=(f"{BBX_SLAVE}:pw-s", f"{REAL_WORKER}:pw-w"))
    master = Master(tmp / "m")
    worker = Worker(tmp / "w", master.port, REAL_WORKER, "pw-w")
    slave = None
    try:
        created = run_bbx("slave", "create", tmp / "s", f"127.0.0.1:{master.port}", BBX_SLAVE, "pw-s")
        assert created.returncode == 0, created.stderr
        slave = Proc([BBX, "slave", "start", tmp / "s"], log_path=tmp / "slave.out")
        started = worker.start()
        assert started.returncode == 0, started.stdout + worker.log()[-2000:]
        slave.wait_for_output(ATTACHED, 30)
        for name in (BBX_SLAVE, REAL_WORKER):
            master.wait_log(f"slave {name} attached", 20)
        yield tmp, master
    finally:
        if slave is not None:
            slave.terminate()
        worker.stop()
        master.stop()


def bbx_run(master: Master, builder: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`bbx run --master-dir DIR BUILDER -- COMMAND...` with stdout and stderr piped, as bytes."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    env.pop("BBX_MASTER_DIR", None)
    return subprocess.run([BBX, "run", "--master-dir", str(master.dir), builder, "--", *command],
                          capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("builder", SLAVE_KINDS)
def test_run_puts_stdout_on_stdout_stderr_on_stderr_and_exits_with_the_commands_rc(farm, builder):
    _, master = farm
    r = bbx_run(master, builder, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr.splitlines(keepends=True)


@pytest.mark.parametrize("builder", SLAVE_KINDS)
def test_sigint_to_run_interrupts_the_command_and_ends_within_10_seconds(farm, builder, tmp_path):
    _, master = farm
    pidfile = tmp_path / "sleep.pid"
    # "rea''dy": the shell prints "ready", but the command header echoing the script does not.
    proc = Proc([BBX, "run", "--master-dir", master.dir, builder, "--", "sh", "-c",
                 f"echo $$ > {pidfile}; echo rea''dy; exec sleep 600"], log_path=tmp_path / "run.out")
    pid = None
    try:
        proc.wait_for_output("ready", 20)  # the worker buffers output for up to 5 s
        pid = int(pidfile.read_text())
        assert alive(pid)
        os.kill(proc.pid, signal.SIGINT)
        try:
            rc = proc.popen.wait(INTERRUPT_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bbx run still running {INTERRUPT_DEADLINE}s after SIGINT:\n"
                                 + proc.output()[-2000:]) from None
        assert rc == EXIT_INTERRUPTED, proc.output()[-2000:]
        wait_until(lambda: not alive(pid), 5, what=f"the sleep (pid {pid}) to be gone")
    finally:
        proc.terminate()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stdout_through_a_pipe_is_byte_exact_from_a_bbx_slave(farm, tmp_path):
    _, master = farm
    (tmp_path / "awkward").write_bytes(AWKWARD)
    r = bbx_run(master, BBX_SLAVE, "cat", str(tmp_path / "awkward"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout == AWKWARD


def test_multi_byte_characters_split_across_pipe_reads_arrive_intact_from_a_bbx_slave(farm, tmp_path):
    _, master = farm
    # 3-byte characters: no power-of-two read size ends on a character boundary every time.
    data = ("\u20ac" * 400_000).encode()
    (tmp_path / "euros").write_bytes(data)
    r = bbx_run(master, BBX_SLAVE, "cat", str(tmp_path / "euros"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert len(r.stdout) == len(data) and r.stdout == data


def test_a_real_worker_keeps_lines_and_utf8_but_rewrites_cr_and_ends_with_a_newline(farm, tmp_path):
    _, master = farm
    (tmp_path / "awkward").write_bytes(AWKWARD)
    r = bbx_run(master, REAL_WORKER, "cat", str(tmp_path / "awkward"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    # buildbot-worker 4.3 turns CRLF and a CR followed by text into LF and terminates the last
    # line (docs/protocol.md §5.1); everything else, empty lines and UTF-8 included, is kept.
    assert r.stdout == AWKWARD.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\n"
