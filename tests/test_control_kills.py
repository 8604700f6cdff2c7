"""Operator control of running commands against a real master and a real bbx slave: kills with
a grace (Ctrl-C of a real `bbx run`, `bbx cancel`), `bbx run` waiting for a busy slave, and
`--request` / `--no-wait` finding a build by its request."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.buildfarm import master_toml, stored_log, running_farm
from tests.support import marked, wait_until

# A command with a TERM cleanup, and one that ignores TERM (its children inherit SIG_IGN).
CLEANS_UP = "trap 'echo cleanup; exit 0' TERM; echo ready; while :; do sleep 0.1; done"
IGNORES_TERM = "trap '' TERM; echo ready; while :; do sleep 0.1; done"

BUILDERS = f'''
[[builders]]
name = "one"
slaves = ["s1"]

[[builders]]
name = "tidy"
slaves = ["s1"]
[[builders.steps]]
name = "work"
command = "{CLEANS_UP}"

[[builders]]
name = "stubborn"
slaves = ["s1"]
[[builders.steps]]
name = "work"
command = "{IGNORES_TERM} # MARK-BUILD"
sigtermTime = 1

[[builders]]
name = "very-stubborn"
slaves = ["s1"]
[[builders.steps]]
name = "work"
command = "{IGNORES_TERM} # MARK-LONG"
sigtermTime = 3600

[[builders]]
name = "ok"
slaves = ["s1"]
[[builders.steps]]
name = "hello"
command = ["echo", "hello"]
'''


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    yield from running_farm(tmp_path_factory.mktemp("kills"), master_toml(BUILDERS))


def running_with(marker: str) -> list[int]:
    """Pids of live processes whose command line holds `marker` (pytest's own excepted)."""
    found = []
    for pid in sorted(marked(marker, anywhere=True)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid != os.getpid() and b"pytest" not in cmdline:
            found.append(pid)
    return found


def idle(farm) -> None:
    """Wait until the slave runs nothing (the previous test's command has ended)."""
    wait_until(lambda: not [b for b in farm.builds() if b["finished_at"] is None], 30,
               what="the slave to be idle")


def test_ctrl_c_of_bbx_run_sends_term_first_and_the_trap_cleans_up(farm):
    idle(farm)
    marker = f"MARK-{uuid.uuid4().hex}"
    run = farm.cli("run", "one", "--shell", "--", f"{CLEANS_UP} # {marker}", name="tidy-run")
    try:
        run.wait_for_output("ready", timeout=30)
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(30) == 130, run.output()
    finally:
        run.terminate()
    out = run.output()
    assert "cleanup\n" in out and "interrupted by operator" in out
    assert "SIGKILL" not in out  # the trap ended it within the grace
    wait_until(lambda: running_with(marker) == [], 10, what="nothing of the command left")


def test_a_command_ignoring_term_is_killed_after_kill_after_and_nothing_survives(farm):
    idle(farm)
    marker = f"MARK-{uuid.uuid4().hex}"
    run = farm.cli("run", "one", "--kill-after", "1", "--shell", "--",
                   f"{IGNORES_TERM} # {marker}", name="stubborn-run")
    try:
        run.wait_for_output("ready", timeout=30)
        assert running_with(marker)
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(30) == 130, run.output()
    finally:
        run.terminate()
    out = run.output()
    assert "SIGTERM did not stop everything; sending SIGKILL" in out, out
    wait_until(lambda: running_with(marker) == [], 10, what="nothing of the command left")


def test_a_second_ctrl_c_kills_at_once(farm):
    idle(farm)
    marker = f"MARK-{uuid.uuid4().hex}"
    # A grace far longer than any test: only the second Ctrl-C can end it in time.
    run = farm.cli("run", "one", "--kill-after", "3600", "--shell", "--",
                   f"{IGNORES_TERM} # {marker}", name="twice-run")
    try:
        run.wait_for_output("ready", timeout=30)
        run.popen.send_signal(signal.SIGINT)
        run.wait_for_output("Ctrl-C again to kill", timeout=10)
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(30) == 130, run.output()
    finally:
        run.terminate()
    out = run.output()
    assert "not waiting for the rest of the grace" in out and "sending SIGKILL" in out, out
    wait_until(lambda: running_with(marker) == [], 10, what="nothing of the command left")


def test_signal_option_sends_the_named_signal_first(farm):
    idle(farm)
    run = farm.cli("run", "one", "--signal", "INT", "--shell", "--",
                   "trap 'echo got-int; exit 0' INT; echo ready; while :; do sleep 0.1; done",
                   name="int-run")
    try:
        run.wait_for_output("ready", timeout=30)
        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(30) == 130, run.output()
    finally:
        run.terminate()
    assert "got-int\n" in run.output()


def test_bbx_cancel_sends_term_first_and_the_step_cleans_up(farm):
    idle(farm)
    queued = json.loads(farm.bbx("build", "tidy", "--no-wait", "--json").stdout)
    build = farm.wait_build(lambda b: b["request_id"] == queued["request_id"],
                            what="the tidy build to start")
    wait_until(lambda: "ready" in stored_log(farm.db, build["id"]), 30, what="the step to run")
    cancelled = farm.bbx("cancel", str(build["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"] is not None,
                           what="the cancelled build to end")
    assert done["result_name"] == "cancelled"
    text = stored_log(farm.db, build["id"])
    assert "cleanup\n" in text and "SIGKILL" not in text


def test_bbx_cancel_kills_a_step_ignoring_term_after_its_sigterm_time(farm):
    idle(farm)
    queued = json.loads(farm.bbx("build", "stubborn", "--no-wait", "--json").stdout)
    build = farm.wait_build(lambda b: b["request_id"] == queued["request_id"],
                            what="the stubborn build to start")
    wait_until(lambda: "ready" in stored_log(farm.db, build["id"]), 30, what="the step to run")
    assert running_with("MARK-BUILD")
    # By request id: the request is no longer queued, so its running build is cancelled.
    cancelled = farm.bbx("cancel", "--request", str(queued["request_id"]), "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["build_id"] == build["id"]
    done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"] is not None,
                           what="the cancelled build to end")
    assert done["result_name"] == "cancelled"
    assert "SIGTERM did not stop everything; sending SIGKILL" in stored_log(farm.db, build["id"])
    wait_until(lambda: running_with("MARK-BUILD") == [], 10, what="nothing of the step left")


def test_a_second_bbx_cancel_kills_at_once(farm):
    idle(farm)
    queued = json.loads(farm.bbx("build", "very-stubborn", "--no-wait", "--json").stdout)
    build = farm.wait_build(lambda b: b["request_id"] == queued["request_id"],
                            what="the build to start")
    wait_until(lambda: "ready" in stored_log(farm.db, build["id"]), 30, what="the step to run")
    assert farm.bbx("cancel", str(build["id"])).returncode == 0
    wait_until(lambda: "attempting to kill" in stored_log(farm.db, build["id"]), 30,
               what="the first cancel to reach the slave")
    assert farm.bbx("cancel", str(build["id"])).returncode == 0
    done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"] is not None,
                           what="the build to end long before its hour of grace")
    assert done["result_name"] == "cancelled"
    assert "not waiting for the rest of the grace" in stored_log(farm.db, build["id"])
    wait_until(lambda: running_with("MARK-LONG") == [], 10, what="nothing of the step left")


def test_bbx_run_on_a_busy_builder_waits_in_line_then_runs(farm, tmp_path):
    idle(farm)
    go = tmp_path / "go"
    first = farm.cli("run", "one", "--shell", "--",
                     f"echo first-ready; while [ ! -e {go} ]; do sleep 0.1; done", name="first")
    second = None
    try:
        first.wait_for_output("first-ready", timeout=30)
        refused = farm.bbx("run", "one", "--no-wait-for-slave", "--", "true")
        assert refused.returncode == 1 and "busy" in refused.stderr, refused.stderr
        second = farm.cli("run", "one", "--", "echo", "second-ran", name="second")
        second.wait_for_output("1st in line", timeout=30)
        assert "second-ran" not in second.output()
        go.touch()
        assert first.popen.wait(30) == 0, first.output()
        assert second.popen.wait(30) == 0, second.output()
    finally:
        first.terminate()
        if second is not None:
            second.terminate()
    assert "second-ran\n" in second.output()


def test_ctrl_c_while_waiting_for_a_slave_leaves_the_line_and_nothing_runs(farm, tmp_path):
    idle(farm)
    go = tmp_path / "go"
    mark = tmp_path / "never"
    first = farm.cli("run", "one", "--shell", "--",
                     f"echo first-ready; while [ ! -e {go} ]; do sleep 0.1; done", name="first")
    try:
        first.wait_for_output("first-ready", timeout=30)
        second = farm.cli("run", "one", "--", "touch", str(mark), name="leaver")
        second.wait_for_output("1st in line", timeout=30)
        second.popen.send_signal(signal.SIGINT)
        assert second.popen.wait(30) == 130
        assert "nothing ran" in second.output()
        go.touch()
        assert first.popen.wait(30) == 0
    finally:
        first.terminate()
    idle(farm)
    assert not mark.exists()


def test_build_no_wait_prints_the_build_id_and_log_takes_the_request_id(farm):
    idle(farm)
    answer = farm.bbx("build", "ok", "--no-wait")
    assert answer.returncode == 0, answer.stderr
    assert "started as build" in answer.stdout, answer.stdout
    build_id = int(answer.stdout.split("started as build ")[1].split()[0])
    request_id = int(answer.stdout.split("queued build request ")[1].split(";")[0])
    farm.wait_build(lambda b: b["id"] == build_id and b["finished_at"] is not None,
                    what="the build to end")
    by_request = farm.bbx("log", "--request", str(request_id))
    by_build = farm.bbx("log", str(build_id))
    assert by_request.returncode == 0, by_request.stderr
    assert by_request.stdout == by_build.stdout and "hello" in by_request.stdout
    unknown = farm.bbx("log", "--request", "999999")
    assert unknown.returncode == 5 and "no build request 999999" in unknown.stderr
