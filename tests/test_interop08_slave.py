"""A real buildslave 0.8.14 (Python 2.7, tests/peers08.py) under a real `bbx master`: attach,
`bbx slaves` / `ping` / `info`, `bbx run` (rc, streams, bytes, Ctrl-C), `bbx build` with
transfers, and the slave-initiated graceful shutdown (Bot.shutdown, and a builder's shutdown
for slaves without it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.buildfarm import Farm, master_toml
from tests.peers08 import BuildSlave08, slave08_install  # noqa: F401 (fixture)
from tests.support import BBX, Proc, wait_until

SLAVE = "s08"
BUILDERS = '''
[[builders]]
name = "s08"
slaves = ["s08"]

[[builders]]
name = "files08"
slaves = ["s08"]

[[builders.steps]]
download = { src = "payload.bin", dest = "got.bin" }

[[builders.steps]]
name = "check"
command = ["sha256sum", "got.bin"]

[[builders.steps]]
upload = { src = "got.bin", dest = "back/payload.bin" }

[[builders]]
name = "g08"
slaves = ["g08"]

[[builders]]
name = "old08"
slaves = ["old08"]

[[builders]]
name = "pty08"
slaves = ["pty08"]
'''
# What the 0.8 slave logs once the master's attach sequence reached it (bot.py remote_print).
ATTACHED = "message from master: attached"
# `bbx run` exit status after Ctrl-C (bbx run --help).
EXIT_INTERRUPTED = 130
# The brief's bound for an interrupted `bbx run` to end.
INTERRUPT_DEADLINE = 10.0

# Output meant to survive byte for byte: a bare CR, CRLF, empty lines, 2-, 3- and 4-byte UTF-8
# characters and no final newline; repeated past 0.8's 64 KiB buffer so the slave sends it in
# several chunks, which cut characters in two.
AWKWARD = ("bare\rcarriage\r\nreturn\n\n\nempty lines above\n"
           "\u00e9t\u00e9 \u20ac \U0001F600 multi-byte\n\nno final newline").encode()


@pytest.fixture(scope="module")
def farm(tmp_path_factory, slave08_install):
    root = tmp_path_factory.mktemp("interop08-slave")
    farm = Farm(root, master_toml(BUILDERS, slaves=((SLAVE, 1), ("g08", 1), ("old08", 1),
                                                   ("pty08", 1))))
    slave = None
    try:
        farm.start_master()
        slave = BuildSlave08(slave08_install, root / "s08", f"127.0.0.1:{farm.port}", SLAVE,
                             f"pw-{SLAVE}").start()
        slave.wait_log(ATTACHED)
        wait_until(lambda: SLAVE in farm.attached(), 20, what="s08 attached")
        yield farm, slave
    finally:
        if slave is not None:
            slave.stop()
        farm.stop()


def bbx_run(farm: Farm, builder: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`bbx run BUILDER -- COMMAND...` with stdout and stderr piped, as bytes."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", BBX_MASTER_DIR=str(farm.dir))
    return subprocess.run([BBX, "run", builder, "--", *command], capture_output=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_real_slave_attaches_with_the_legacy_sequence_and_is_listed_slave_era(farm):
    farm_, slave = farm
    log = slave.log()
    # getWorkerInfo is NoSuchMethod on 0.8: the master read that failure from Python 2 and fell
    # back (docs/protocol.md §4.1); then setMaster and the builder's print (§4.3).
    assert "buildbot-slave detected, failing back to deprecated buildslave API" in log
    assert "SlaveBuilder.remote_print(s08): message from master: attached" in log
    rows = {r["name"]: r for r in json.loads(farm_.bbx("slaves", "--json").stdout)}
    assert rows[SLAVE]["connected"] and rows[SLAVE]["dialect"] == "slave"
    assert rows[SLAVE]["version"].startswith("0.8.14")
    assert "(slave-era, version 0.8.14" in farm_.master.output()
    table = farm_.bbx("slaves")
    assert table.returncode == 0 and "slave" in table.stdout.split("s08", 1)[1].splitlines()[0]


def test_ping_goes_to_the_slaves_builder(farm):
    farm_, slave = farm
    result = farm_.bbx("ping", SLAVE, "--count", "2")
    assert result.returncode == 0, result.stderr
    assert "2 replies" in result.stdout
    slave.wait_log("SlaveBuilder.remote_print(s08): message from master: ping", count=2)


def test_info_shows_version_environ_system_and_basedir(farm):
    farm_, slave = farm
    result = farm_.bbx("info", SLAVE, "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    info = answer["info"]
    assert answer["dialect"] == "slave"
    assert info["version"].startswith("0.8.14")
    assert info["system"] == "posix" and info["basedir"] == str(slave.basedir)
    assert isinstance(info["environ"], dict) and info["environ"].get("PATH")
    assert answer["commands"]["shell"] == "2.16"  # getCommands, as 0.8 has no slave_commands
    table = farm_.bbx("info", SLAVE)
    assert table.returncode == 0 and str(slave.basedir) in table.stdout


def test_run_gives_the_commands_rc_and_each_stream_on_its_own(farm):
    farm_, _ = farm
    r = bbx_run(farm_, SLAVE, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr.splitlines(keepends=True)


def test_run_stdout_is_byte_exact_even_when_the_slave_cuts_characters_in_two(farm, tmp_path):
    farm_, _ = farm
    data = AWKWARD * 9000  # ~600 KB: several 0.8 chunks, cut anywhere
    (tmp_path / "awkward").write_bytes(data)
    r = bbx_run(farm_, SLAVE, "cat", str(tmp_path / "awkward"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert len(r.stdout) == len(data) and r.stdout == data


def test_ctrl_c_on_run_kills_the_whole_process_tree_on_the_slave(farm, tmp_path):
    farm_, _ = farm
    pids = tmp_path / "pids"
    # "rea''dy": the shell prints "ready", but the command header echoing the script does not.
    script = f"sleep 600 & echo $! > {pids}; sh -c 'echo $$ >> {pids}; exec sleep 600' & " \
             f"echo $$ >> {pids}; sleep 0.2; echo rea''dy; wait"
    proc = Proc([BBX, "run", SLAVE, "--", "sh", "-c", script], log_path=tmp_path / "run.out",
                env={"BBX_MASTER_DIR": str(farm_.dir), "NO_COLOR": "1"})
    tree: list[int] = []
    try:
        proc.wait_for_output("ready", 20)
        tree = [int(p) for p in pids.read_text().split()]
        assert len(tree) == 3 and all(alive(p) for p in tree)
        os.kill(proc.pid, signal.SIGINT)
        try:
            rc = proc.popen.wait(INTERRUPT_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bbx run still running {INTERRUPT_DEADLINE}s after SIGINT:\n"
                                 + proc.output()[-2000:]) from None
        assert rc == EXIT_INTERRUPTED, proc.output()[-2000:]
        wait_until(lambda: not any(alive(p) for p in tree), 5, what=f"the tree {tree} to be gone")
    finally:
        proc.terminate()
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_slave_era_pty_choice_is_left_to_the_slave(farm, slave08_install, tmp_path):
    farm_, _ = farm
    # Shell 2.16 < 3.0: the master sends usePTY="slave-config" (docs/protocol.md §5.5), so a slave
    # created with --usepty=1 runs the command on a terminal; a bool False would not.
    slave = BuildSlave08(slave08_install, tmp_path / "pty08", f"127.0.0.1:{farm_.port}", "pty08",
                         "pw-pty08", usepty=True).start()
    try:
        slave.wait_log(ATTACHED)
        wait_until(lambda: "pty08" in farm_.attached(), 20, what="pty08 attached")
        r = bbx_run(farm_, "pty08", "sh", "-c", "test -t 1 && echo on-a-tty")
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
        assert b"on-a-tty" in r.stdout
    finally:
        slave.stop()


def test_a_build_with_download_and_upload_moves_files_intact(farm):
    farm_, _ = farm
    payload = os.urandom(1024 * 1024 + 17)
    (farm_.dir / "payload.bin").write_bytes(payload)
    result = farm_.bbx("build", "files08", "--json", timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    stdout = "".join(e.get("stdout", "") for e in events)
    assert stdout.startswith(hashlib.sha256(payload).hexdigest())  # what the slave received
    assert (farm_.dir / "back" / "payload.bin").read_bytes() == payload  # and what came back


# -- graceful shutdown, asked for by the slave (docs/protocol.md §4.5) --------------------------------

def _shutting_slave(farm_: Farm, install, tmp_path: Path, name: str, *, without_bot_shutdown=False):
    slave = BuildSlave08(install, tmp_path / name, f"127.0.0.1:{farm_.port}", name, f"pw-{name}",
                         allow_shutdown="signal")
    if without_bot_shutdown:
        # A slave older than 0.8.3: its Bot has no shutdown, only its builders do. The real
        # 0.8.14 code otherwise, with that one method taken away before the slave starts.
        tac = slave.basedir / "buildbot.tac"
        text = tac.read_text()
        tac.write_text(text.replace("application = service.Application('buildslave')",
                                    "from buildslave.bot import Bot\ndel Bot.remote_shutdown\n"
                                    "application = service.Application('buildslave')"))
    slave.start()
    slave.wait_log(ATTACHED)
    wait_until(lambda: name in farm_.attached(), 20, what=f"{name} attached")
    return slave


def test_sighup_with_allow_shutdown_signal_ends_in_bot_shutdown(farm, slave08_install, tmp_path):
    farm_, _ = farm
    slave = _shutting_slave(farm_, slave08_install, tmp_path, "g08")
    try:
        os.kill(slave.proc.pid, signal.SIGHUP)
        slave.wait_log("Telling the master we want to shutdown")
        assert slave.proc.popen.wait(20) == 0, slave.log()[-2000:]
        assert "slave shutting down on command from master" in slave.log()
        assert "deprecated slavebuilder.shutdown" not in slave.log()
        farm_.master.wait_for_output("slave g08 is idle; telling it to shut down")
        wait_until(lambda: "g08" not in farm_.attached(), 20, what="g08 detached")
    finally:
        slave.stop()


def test_a_slave_without_bot_shutdown_is_stopped_through_its_builder(farm, slave08_install, tmp_path):
    farm_, _ = farm
    slave = _shutting_slave(farm_, slave08_install, tmp_path, "old08", without_bot_shutdown=True)
    try:
        os.kill(slave.proc.pid, signal.SIGHUP)
        slave.wait_log("NOTE: master is using deprecated slavebuilder.shutdown method", timeout=20)
        slave.proc.popen.wait(20)
        farm_.master.wait_for_output("slave old08 has no Bot.shutdown; asking builder old08")
        wait_until(lambda: "old08" not in farm_.attached(), 20, what="old08 detached")
    finally:
        slave.stop()
