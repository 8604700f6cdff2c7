"""The slave's file-system commands, each run in a real child process on real files.

Every test drives one command through tests/drive_command.py and reads the updates it sent.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("drive_command.py")


def drive(builder_dir, name, args, *extra, env=None, timeout=60):
    """Run one command; return (updates as [(key, value)], the driver's other JSON lines)."""
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(builder_dir), name, json.dumps(args), *extra],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"driver printed nothing; stderr:\n{proc.stderr}"
    updates = [tuple(line["update"]) for line in lines if "update" in line]
    other = {k: v for line in lines for k, v in line.items() if k != "update"}
    return updates, other


def values(updates, key):
    return [v for k, v in updates if k == key]


def rc_of(updates):
    rcs = values(updates, "rc")
    assert len(rcs) == 1, f"expected exactly one rc, got {updates}"
    return rcs[0]


@pytest.fixture
def builder(tmp_path):
    d = tmp_path / "slave" / "builder"
    d.mkdir(parents=True)
    return d


def test_mkdir_creates_nested_directories_under_the_builder_dir(builder):
    updates, other = drive(builder, "mkdir", {"dir": "build/a/b"})
    assert rc_of(updates) == 0
    assert (builder / "build" / "a" / "b").is_dir()
    assert other["complete"] is None


def test_mkdir_accepts_a_list_and_the_worker_paths_name(builder, tmp_path):
    elsewhere = tmp_path / "abs" / "dir"
    updates, _ = drive(builder, "mkdir", {"paths": ["one", str(elsewhere)]})
    assert rc_of(updates) == 0
    assert (builder / "one").is_dir() and elsewhere.is_dir()


def test_mkdir_of_an_existing_directory_succeeds(builder):
    (builder / "there").mkdir()
    updates, _ = drive(builder, "mkdir", {"dir": "there"})
    assert rc_of(updates) == 0


def test_mkdir_below_a_file_reports_the_errno_and_a_header(builder):
    (builder / "afile").write_text("x")
    updates, other = drive(builder, "mkdir", {"dir": "afile/sub"})
    assert rc_of(updates) == errno.ENOTDIR
    assert values(updates, "header") == [f"mkdir: Not a directory: {builder}/afile/sub"]
    assert other["complete"] is None


def test_every_command_ends_with_rc_then_elapsed(builder):
    updates, _ = drive(builder, "mkdir", {"dir": "x"})
    assert [k for k, _ in updates] == ["rc", "elapsed"]
    assert isinstance(updates[1][1], float)


def test_rmdir_removes_a_tree(builder):
    tree = builder / "build" / "deep" / "er"
    tree.mkdir(parents=True)
    (tree / "f").write_text("x")
    os.symlink("/nonexistent", builder / "build" / "dangling")
    updates, _ = drive(builder, "rmdir", {"dir": "build"})
    assert rc_of(updates) == 0
    assert not (builder / "build").exists()


def test_rmdir_removes_every_directory_of_a_list(builder):
    for name in ("a", "b", "c"):
        (builder / name).mkdir()
    updates, _ = drive(builder, "rmdir", {"dir": ["a", "b"]})
    assert rc_of(updates) == 0
    assert sorted(p.name for p in builder.iterdir()) == ["c"]


def test_rmdir_of_a_missing_directory_succeeds(builder):
    updates, _ = drive(builder, "rmdir", {"dir": "never-was"})
    assert rc_of(updates) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_rmdir_grants_itself_permission_on_locked_subdirectories(builder):
    locked = builder / "build" / "locked"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    locked.chmod(0)
    updates, _ = drive(builder, "rmdir", {"dir": "build"})
    assert rc_of(updates) == 0
    assert not (builder / "build").exists()


def _unremovable(builder):
    """A directory rm -rf cannot delete; returns an undo function (or skips)."""
    target = builder / "build" / "stuck"
    target.mkdir(parents=True)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("running as root and chattr +i is unavailable here")
        return lambda: subprocess.run(["chattr", "-i", str(target)], check=True)
    (builder / "build").chmod(0o555)
    return lambda: (builder / "build").chmod(0o755)


def test_rmdir_that_cannot_remove_reports_a_nonzero_rc_and_rm_output(builder):
    undo = _unremovable(builder)
    try:
        updates, _ = drive(builder, "rmdir", {"dir": "build"})
    finally:
        undo()
    assert rc_of(updates) != 0
    assert "rm:" in "".join(values(updates, "stderr"))


def test_cpdir_copies_a_tree_keeping_symlinks_and_modes(builder):
    src = builder / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "tool").write_text("#!/bin/sh\n")
    (src / "sub" / "tool").chmod(0o751)
    os.symlink("tool", src / "sub" / "link")
    updates, _ = drive(builder, "cpdir", {"fromdir": "src", "todir": "out/copy"})
    assert rc_of(updates) == 0
    copy = builder / "out" / "copy" / "sub"
    assert (copy / "tool").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((copy / "tool").stat().st_mode) == 0o751
    assert os.readlink(copy / "link") == "tool"
    assert "copy/sub/tool" in "".join(values(updates, "stdout"))


def test_cpdir_accepts_the_worker_internal_names(builder):
    (builder / "src").mkdir()
    (builder / "src" / "f").write_text("data")
    updates, _ = drive(builder, "cpdir", {"from_path": str(builder / "src"), "to_path": "dst"})
    assert rc_of(updates) == 0
    assert (builder / "dst" / "f").read_text() == "data"


def test_cpdir_of_a_missing_source_fails_with_cp_message(builder):
    updates, _ = drive(builder, "cpdir", {"fromdir": "nope", "todir": "dst"})
    assert rc_of(updates) != 0
    assert "nope" in "".join(values(updates, "stderr"))


def test_stat_reports_the_ten_ints_of_os_stat(builder):
    (builder / "wd").mkdir()
    target = builder / "wd" / "f"
    target.write_bytes(b"12345")
    updates, _ = drive(builder, "stat", {"file": "f", "workdir": "wd"})
    assert rc_of(updates) == 0
    [st] = values(updates, "stat")
    assert st == [int(v) for v in tuple(os.stat(target))]
    assert len(st) == 10 and st[stat.ST_SIZE] == 5
    assert [k for k, _ in updates] == ["stat", "rc", "elapsed"]


def test_stat_of_a_missing_file_reports_enoent(builder):
    updates, _ = drive(builder, "stat", {"file": "missing"})
    assert rc_of(updates) == errno.ENOENT
    assert values(updates, "header") == [f"stat: No such file or directory: {builder}/missing"]
    assert values(updates, "stat") == []


def test_glob_is_recursive_and_returns_sorted_absolute_paths(builder):
    for rel in ("b.txt", "a/x.txt", "a/deep/y.txt", "a/deep/z.log"):
        p = builder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    updates, _ = drive(builder, "glob", {"path": "**/*.txt"})
    assert rc_of(updates) == 0
    assert values(updates, "files") == [
        sorted(str(builder / rel) for rel in ("b.txt", "a/x.txt", "a/deep/y.txt"))
    ]


def test_glob_without_matches_sends_one_empty_list(builder):
    updates, _ = drive(builder, "glob", {"path": "*.none"})
    assert rc_of(updates) == 0
    assert values(updates, "files") == [[]]


def test_listdir_sends_the_entry_names(builder):
    (builder / "d" / "sub").mkdir(parents=True)
    (builder / "d" / "f").write_text("")
    updates, _ = drive(builder, "listdir", {"dir": "d"})
    assert rc_of(updates) == 0
    assert values(updates, "files") == [["f", "sub"]]


def test_listdir_of_a_missing_directory_reports_enoent(builder):
    updates, _ = drive(builder, "listdir", {"dir": "nope"})
    assert rc_of(updates) == errno.ENOENT
    assert values(updates, "files") == []
    assert values(updates, "header") == [f"listdir: No such file or directory: {builder}/nope"]


def test_rmfile_removes_a_file(builder):
    (builder / "f").write_text("")
    updates, _ = drive(builder, "rmfile", {"path": "f"})
    assert rc_of(updates) == 0
    assert not (builder / "f").exists()


def test_rmfile_of_a_missing_file_reports_enoent(builder):
    updates, _ = drive(builder, "rmfile", {"path": "gone"})
    assert rc_of(updates) == errno.ENOENT
    assert values(updates, "header") == [f"rmfile: No such file or directory: {builder}/gone"]


def test_absolute_paths_are_not_moved_under_the_builder_dir(builder, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    updates, _ = drive(builder, "rmfile", {"path": str(outside)})
    assert rc_of(updates) == 0
    assert not outside.exists()


@pytest.mark.parametrize(
    "name, args",
    [
        ("mkdir", {}),
        ("rmdir", {"timeout": 5}),
        ("cpdir", {"fromdir": "a"}),
        ("stat", {"workdir": "w"}),
        ("glob", {}),
        ("listdir", {}),
        ("rmfile", {}),
        ("mkdir", {"dir": 5}),
    ],
)
def test_missing_or_malformed_arguments_are_refused_before_starting(builder, name, args):
    updates, other = drive(builder, name, args)
    assert updates == []
    assert other["refused"].startswith("ValueError")
    assert "complete" not in other


@pytest.fixture
def slow_cp(tmp_path):
    """An environment whose `cp` hangs silently, standing in for a copy that takes forever."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cp"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_an_interrupted_cpdir_kills_its_child_and_reports_rc_minus_one(builder, slow_cp):
    (builder / "src").mkdir()
    updates, other = drive(
        builder, "cpdir", {"fromdir": "src", "todir": "dst", "timeout": None},
        "--interrupt-after", "0.5", env=slow_cp, timeout=30,
    )
    assert other["complete"] is None
    assert rc_of(updates) == -1
    assert "command interrupted: test interrupt" in "".join(values(updates, "header"))
    assert values(updates, "elapsed") == []


def test_a_silent_cpdir_is_killed_after_its_timeout(builder, slow_cp):
    (builder / "src").mkdir()
    updates, other = drive(
        builder, "cpdir", {"fromdir": "src", "todir": "dst", "timeout": 0.5},
        env=slow_cp, timeout=30,
    )
    assert rc_of(updates) == -1
    assert values(updates, "failure_reason") == ["timeout_without_output"]
    assert other["complete"] is None
