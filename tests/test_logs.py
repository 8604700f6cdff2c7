"""Logs of both roles: human lines or JSON objects, size rotation, private files."""

from __future__ import annotations

import json
import stat

from tests.buildfarm import Farm, master_toml
from tests.support import BBX, Proc, file_contains, run_bbx, wait_until


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_slave_log_rotates_by_size_keeping_n_private_backups(tmp_path):
    d = tmp_path / "slave"
    # Nothing listens on port 1: the slave logs a retry line every ~0.5 s (maxdelay 1).
    assert run_bbx("slave", "create", d, "127.0.0.1:1", "w", "pw", "--maxdelay", "1").returncode == 0
    proc = Proc([BBX, "slave", "start", d, "--log-max-bytes", "600", "--log-backups", "2"],
                log_path=tmp_path / "out.txt")
    try:
        wait_until(lambda: (d / "slave.log.2").exists(), 60, what="a second rotation")
    finally:
        proc.terminate()
    assert not (d / "slave.log.3").exists()
    for name in ("slave.log", "slave.log.1", "slave.log.2"):
        assert mode(d / name) == 0o600, name
        assert (d / name).stat().st_size <= 600 + 400  # rotated after the line that crossed


def test_json_log_lines_parse_and_mask_secret_looking_fields(tmp_path):
    d = tmp_path / "slave"
    assert run_bbx("slave", "create", d, "127.0.0.1:1", "w", "pw", "--maxdelay", "1").returncode == 0
    proc = Proc([BBX, "slave", "start", d, "--log-format", "json"], log_path=tmp_path / "out.txt")
    try:
        wait_until(lambda: file_contains(d / "slave.log", "retrying"), 30, what="a retry line")
    finally:
        proc.terminate()
    records = [json.loads(line) for line in (d / "slave.log").read_text().splitlines()]
    assert all({"time", "ts", "level", "namespace", "message"} <= set(r) for r in records)
    assert any("connection refused" in r["message"] for r in records)
    assert "pw" not in (d / "slave.log").read_text().replace("password", "")


def test_json_formatter_masks_secret_field_names():
    from twisted.logger import LogLevel

    from bbx.logs import MASK, json_line

    line = json_line({"log_format": "login {name}", "name": "x", "api_token": "t0ps3cret",
                      "log_level": LogLevel.warn, "log_time": 0.0, "log_namespace": "t"})
    record = json.loads(line)
    assert record["api_token"] == MASK and record["message"] == "login x"
    assert record["level"] == "warn" and "t0ps3cret" not in line


def test_master_log_is_private_and_json_when_asked(tmp_path):
    farm = Farm(tmp_path, master_toml(""))
    (farm.dir / "master.log").unlink(missing_ok=True)
    proc = Proc([BBX, "master", "start", farm.dir, "--log-format", "json"],
                log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("listening on", 30)
    finally:
        proc.terminate()
    log = farm.dir / "master.log"
    assert mode(log) == 0o600
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["message"].startswith("listening on") and r.get("endpoint") for r in records)


def test_bad_log_options_are_one_line_and_exit_2(tmp_path):
    d = tmp_path / "slave"
    assert run_bbx("slave", "create", d, "127.0.0.1:1", "w", "pw").returncode == 0
    r = run_bbx("slave", "start", d, "--log-format", "xml")
    assert r.returncode == 2 and r.stderr.strip() == "bbx: --log-format must be text or json, not 'xml'"


def test_files_an_older_bbx_left_readable_are_made_private_at_start(tmp_path):
    farm = Farm(tmp_path, master_toml(""))
    farm.start_master()
    farm.master.terminate()
    # As an older master left them: the store, its WAL, the logs and a rotated log, all 0644.
    (farm.dir / "master.log.1").write_text("old line\n")
    loose = [farm.dir / n for n in ("bbx.sqlite", "master.log", "master.log.1")]
    loose += [p for p in (farm.dir / "bbx.sqlite-wal",) if p.exists()]
    for path in loose:
        path.chmod(0o644)
    farm.start_master()
    try:
        wait_until(lambda: file_contains(farm.dir / "master.log", "made "), 30,
                   what="the master's line about the files it made private")
    finally:
        farm.master.terminate()
    for path in loose:
        assert mode(path) == 0o600, path
    line = next(ln for ln in (farm.dir / "master.log").read_text().splitlines() if "made " in ln)
    assert "bbx.sqlite" in line and "master.log.1" in line

    d = tmp_path / "slave"
    assert run_bbx("slave", "create", d, "127.0.0.1:1", "w", "pw", "--maxdelay", "1").returncode == 0
    (d / "slave.log.1").write_text("old line\n")
    (d / "slave.log.1").chmod(0o644)
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "slave-out.txt")
    try:
        wait_until(lambda: file_contains(d / "slave.log", "made 1 file(s) private"), 30,
                   what="the slave's line about its rotated log")
    finally:
        proc.terminate()
    assert mode(d / "slave.log.1") == 0o600
