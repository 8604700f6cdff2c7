"""bbx build / builds / log / cancel against a real master, a real bbx slave and a real SQLite
file: step semantics (flunk / warn / halt / alwaysRun), live output, history, transfers."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.buildfarm import master_toml, stored_log, running_farm
from tests.support import wait_until

BUILDERS = '''
[[builders]]
name = "ok"
slaves = ["s1"]
[[builders.steps]]
name = "hello"
command = ["echo", "hello"]
[[builders.steps]]
name = "world"
command = "echo world; echo to-stderr >&2"

[[builders]]
name = "flunk"
slaves = ["s1"]
[[builders.steps]]
name = "first"
command = "echo first"
[[builders.steps]]
name = "breaks"
command = "echo breaking >&2; exit 3"
[[builders.steps]]
name = "goes-on"
command = "echo goes-on"

[[builders]]
name = "warn"
slaves = ["s1"]
[[builders.steps]]
name = "breaks"
command = "exit 1"
flunkOnFailure = false
warnOnFailure = true
[[builders.steps]]
name = "fine"
command = "true"

[[builders]]
name = "halt"
slaves = ["s1"]
[[builders.steps]]
name = "breaks"
command = "exit 2"
haltOnFailure = true
[[builders.steps]]
name = "never"
command = "echo never"
[[builders.steps]]
name = "cleanup"
command = "echo cleaning"
alwaysRun = true

[[builders]]
name = "slow"
slaves = ["s1"]
[[builders.steps]]
name = "wait"
command = "echo waiting; exec sleep 600"
[[builders.steps]]
name = "after"
command = "echo after"
[[builders.steps]]
name = "cleanup"
command = "echo cleaned-up"
alwaysRun = true

[[builders]]
name = "ticks"
slaves = ["s1"]
[[builders.steps]]
name = "tick"
command = "for i in 1 2 3 4 5; do echo tick-$i; sleep 0.3; done"

[[builders]]
name = "files"
slaves = ["s1"]
[[builders.steps]]
download = { src = "payload.bin", dest = "got.bin" }
[[builders.steps]]
name = "check"
command = ["sha256sum", "got.bin"]
[[builders.steps]]
upload = { src = "got.bin", dest = "back/payload.bin" }

[[builders]]
name = "missing-file"
slaves = ["s1"]
[[builders.steps]]
upload = { src = "no-such-file", dest = "never.bin" }
[[builders.steps]]
name = "not-reached"
command = "true"

[[builders]]
name = "nosteps"
slaves = ["s1"]
'''


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    yield from running_farm(tmp_path_factory.mktemp("builds"), master_toml(BUILDERS))


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def step_results(stdout: str) -> list[tuple[str, str]]:
    return [(e["name"], e["result_name"]) for e in events(stdout) if e.get("event") == "stepFinished"]


def test_a_build_shows_each_step_live_then_a_summary_and_exits_0_on_success(farm):
    result = farm.bbx("build", "ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nworld\n"  # piped: the steps' stdout byte for byte
    err = result.stderr
    assert err.index("step 1 · hello") < err.index("step 2 · world") < err.index("to-stderr")
    assert "build SUCCESS" in err and "exit 0" in err
    assert "│ 2 │ world" in err


def test_a_failing_step_flunks_the_build_but_later_steps_still_run(farm):
    result = farm.bbx("build", "flunk", "--json")
    assert result.returncode == 1, result.stderr
    assert step_results(result.stdout) == [("first", "success"), ("breaks", "failure"),
                                           ("goes-on", "success")]
    assert events(result.stdout)[-1] == {"event": "end", "exit_code": 1, "result_name": "failure",
                                         "build_id": events(result.stdout)[0]["build_id"]}


def test_warn_on_failure_without_flunk_makes_warnings_and_exit_0(farm):
    result = farm.bbx("build", "warn", "--json")
    assert result.returncode == 0, result.stderr
    assert step_results(result.stdout) == [("breaks", "failure"), ("fine", "success")]
    assert events(result.stdout)[-1]["result_name"] == "warnings"


def test_halt_on_failure_skips_later_steps_except_always_run(farm):
    result = farm.bbx("build", "halt", "--json")
    assert result.returncode == 1
    assert step_results(result.stdout) == [("breaks", "failure"), ("never", "skipped"),
                                           ("cleanup", "success")]
    stdout = "".join(e.get("stdout", "") for e in events(result.stdout))
    assert "cleaning" in stdout and "never" not in stdout


def test_builds_lists_recent_builds_and_log_prints_the_stored_log(farm):
    built = farm.bbx("build", "flunk", "--json")
    build_id = events(built.stdout)[0]["build_id"]
    listed = farm.bbx("builds", "flunk", "--limit", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["builds"]
    assert (row["id"], row["builder"], row["slave"], row["result_name"]) == (
        build_id, "flunk", "s1", "failure")
    assert row["duration"] > 0 and row["started_at"] > 0
    table = farm.bbx("builds", "--limit", "3")
    assert "FAILURE" in table.stdout and "flunk" in table.stdout
    log = farm.bbx("log", str(build_id))
    assert log.returncode == 0, log.stderr
    assert log.stdout.index("step 1 · first") < log.stdout.index("first\n") < log.stdout.index(
        "breaking") < log.stdout.index("goes-on\n")
    chunks = [json.loads(line) for line in farm.bbx("log", str(build_id), "breaks", "--json").stdout.splitlines()]
    assert {c["step"] for c in chunks} == {2}
    assert "".join(c["text"] for c in chunks if c["stream"] == "stderr") == "breaking\n"
    assert any(c["stream"] == "header" for c in chunks)


def test_bbx_run_is_recorded_as_a_one_step_build(farm):
    ran = farm.bbx("run", "ok", "--", "echo", "recorded-run")
    assert ran.returncode == 0, ran.stderr
    build = farm.wait_build(lambda b: b["builder"] == "ok" and b["request_id"] is None
                            and b["finished_at"] is not None, what="the run's build")
    assert build["result_name"] == "success"
    assert "recorded-run\n" in stored_log(farm.db, build["id"], "stdout")


def test_bbx_run_lists_the_environment_only_when_asked(farm):
    quiet = farm.bbx("run", "ok", "--", "true")
    assert quiet.returncode == 0, quiet.stderr
    assert " argv: ['true']" in quiet.stderr and " environment:" not in quiet.stderr
    loud = farm.bbx("run", "ok", "--log-environ", "--", "true")
    assert loud.returncode == 0, loud.stderr
    assert " environment:" in loud.stderr and "  PATH=" in loud.stderr


def test_cancel_interrupts_a_running_build_and_always_run_steps_still_run(farm):
    queued = farm.bbx("build", "slow", "--no-wait", "--json")
    assert queued.returncode == 0, queued.stderr
    build = farm.wait_build(lambda b: b["builder"] == "slow" and b["state"] == "running",
                            what="the slow build to start")
    wait_until(lambda: "waiting" in stored_log(farm.db, build["id"]), 20, what="the step to run")
    cancelled = farm.bbx("cancel", str(build["id"]), "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelling"
    done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"] is not None,
                           what="the cancelled build to end")
    assert done["result_name"] == "cancelled"
    chunks = [json.loads(line) for line in farm.bbx("log", str(build["id"]), "--json").stdout.splitlines()]
    stdout = "".join(c["text"] for c in chunks if c["stream"] == "stdout")
    assert "cleaned-up\n" in stdout and "after\n" not in stdout


def test_cancel_removes_a_queued_request(farm):
    blocker = farm.bbx("build", "slow", "--no-wait", "--json")
    build = farm.wait_build(lambda b: b["builder"] == "slow" and b["state"] == "running",
                            what="the slow build to start")
    queued = json.loads(farm.bbx("build", "ok", "--no-wait", "--json").stdout)
    assert queued["position"] == 1, blocker.stdout
    removed = farm.bbx("cancel", "--request", str(queued["request_id"]))
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert farm.queued() == []
    farm.bbx("cancel", str(build["id"]))
    farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"] is not None,
                    what="the blocker to end")


def test_log_follow_prints_a_running_build_until_it_ends(farm):
    queued = farm.bbx("build", "ticks", "--no-wait", "--json")
    assert queued.returncode == 0
    build = farm.wait_build(lambda b: b["builder"] == "ticks", what="the ticks build")
    follow = farm.bbx("log", str(build["id"]), "--follow", timeout=30)
    assert follow.returncode == 0, follow.stderr
    assert [ln for ln in follow.stdout.splitlines() if ln.startswith("tick-")] == [
        f"tick-{i}" for i in range(1, 6)]


def test_upload_and_download_steps_move_files_intact(farm):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (farm.dir / "payload.bin").write_bytes(payload)
    result = farm.bbx("build", "files", "--json")
    assert result.returncode == 0, result.stdout[-2000:]
    digest = hashlib.sha256(payload).hexdigest()
    stdout = "".join(e.get("stdout", "") for e in events(result.stdout))
    assert stdout.startswith(digest)  # what the slave received
    assert (farm.dir / "back" / "payload.bin").read_bytes() == payload  # and what came back


def test_a_failed_upload_halts_the_build_and_leaves_no_file(farm):
    result = farm.bbx("build", "missing-file", "--json")
    assert result.returncode == 1
    assert step_results(result.stdout) == [("upload", "failure"), ("not-reached", "skipped")]
    assert not (farm.dir / "never.bin").exists()
    assert not list(farm.dir.glob(".bbx-upload-*"))


@pytest.mark.parametrize("args, text, code", [
    (("build", "nope"), "no builder named 'nope'", 5),
    (("builds", "nope"), "no builder named 'nope'", 5),
    (("log", "999999"), "unknown build id 999999", 5),
    (("cancel", "999999"), "unknown build id 999999", 5),
    (("cancel", "--request", "999999"), "no queued build request 999999", 5),
    (("build", "nosteps"), "builder nosteps has no steps", 2),  # a configuration problem
])
def test_unknown_builders_and_build_ids_are_one_line(farm, args, text, code):
    result = farm.bbx(*args)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
