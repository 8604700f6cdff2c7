"""The slave's transfer commands against local stand-ins for the master's writer and reader.

tests/drive_command.py runs the command in a real reactor in a child process; the writer it
passes keeps what it is sent in a file (and extracts tars on `unpack`), the reader serves a file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile

import pytest

from tests.test_fs_commands import drive, rc_of, values

BLOCK = 16 * 1024


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def builder(tmp_path):
    d = tmp_path / "slave" / "builder"
    (d / "build").mkdir(parents=True)
    return d


@pytest.fixture
def master(tmp_path):
    d = tmp_path / "master"
    d.mkdir()
    return d


def make_file(path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


# ---- uploadFile -------------------------------------------------------------------------------


def test_upload_file_arrives_intact_in_blocks(builder, master):
    src = builder / "build" / "big.bin"
    make_file(src, 5 * BLOCK + 123)
    dest = master / "big.bin"
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "big.bin", "writer": str(dest), "blocksize": BLOCK,
        "maxsize": None, "keepstamp": False,
    })
    assert rc_of(updates) == 0
    assert sha256(dest) == sha256(src)
    writes = [c[1] for c in other["peer_calls"] if c[0] == "write"]
    assert writes == [BLOCK] * 5 + [123]
    assert other["peer_calls"][-1] == ["close"]
    assert values(updates, "header") == [f"sending {src}\n"]
    assert values(updates, "stderr") == []
    assert other["complete"] is None


def test_upload_of_an_empty_file_writes_nothing_and_closes(builder, master):
    (builder / "build" / "empty").write_bytes(b"")
    dest = master / "empty"
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "empty", "writer": str(dest), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 0
    assert dest.read_bytes() == b""
    assert other["peer_calls"] == [["close"]]


def test_upload_accepts_the_slave_era_slavesrc_name(builder, master):
    make_file(builder / "build" / "f", 1000)
    dest = master / "f"
    updates, _ = drive(builder, "uploadFile", {
        "workdir": "build", "slavesrc": "f", "writer": str(dest), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 0
    assert sha256(dest) == sha256(builder / "build" / "f")


def test_upload_under_the_snake_case_alias_works(builder, master):
    make_file(builder / "build" / "f", 10)
    updates, _ = drive(builder, "upload_file", {
        "workdir": "build", "workersrc": "f", "writer": str(master / "f"), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 0
    assert (master / "f").read_bytes() == (builder / "build" / "f").read_bytes()


def test_upload_beyond_maxsize_is_truncated_with_rc_1(builder, master):
    make_file(builder / "build" / "f", 3 * BLOCK)
    dest = master / "f"
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(dest), "blocksize": BLOCK,
        "maxsize": BLOCK + 10,
    })
    assert rc_of(updates) == 1
    assert "Maximum filesize reached" in "".join(values(updates, "stderr"))
    assert dest.read_bytes() == (builder / "build" / "f").read_bytes()[: BLOCK + 10]
    assert other["complete"] is None


def test_upload_of_exactly_maxsize_bytes_is_complete(builder, master):
    make_file(builder / "build" / "f", 2 * BLOCK)
    updates, _ = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(master / "f"), "blocksize": BLOCK,
        "maxsize": 2 * BLOCK,
    })
    assert rc_of(updates) == 0
    assert values(updates, "stderr") == []


def test_keepstamp_sends_utime_after_close_and_preserves_mtime(builder, master):
    src = builder / "build" / "f"
    make_file(src, 100)
    os.utime(src, (1_000_000_000, 1_234_567_890))
    dest = master / "f"
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(dest), "blocksize": BLOCK,
        "keepstamp": True,
    })
    assert rc_of(updates) == 0
    assert [c[0] for c in other["peer_calls"]] == ["write", "close", "utime"]
    assert dest.stat().st_mtime == 1_234_567_890
    assert dest.stat().st_atime == 1_000_000_000


def test_upload_of_a_missing_file_reports_stderr_and_rc_1(builder, master):
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "nope", "writer": str(master / "nope"), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 1
    assert "Cannot open file" in "".join(values(updates, "stderr"))
    assert [c[0] for c in other["peer_calls"]] == ["close"]
    assert other["complete"] is None


def test_a_failing_writer_gives_rc_1_and_fails_the_command(builder, master):
    make_file(builder / "build" / "f", 100)
    (master / "taken").mkdir()  # the stand-in writer's close() cannot rename onto a directory
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(master / "taken"), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 1
    assert "IsADirectoryError" in "".join(values(updates, "stderr"))
    assert "IsADirectoryError" in other["complete"]


def test_blocksize_is_capped_far_below_the_banana_limit(builder, master):
    make_file(builder / "build" / "f", 1024 * 1024)
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(master / "f"),
        "blocksize": 4 * 1024 * 1024,
    })
    assert rc_of(updates) == 0
    assert max(c[1] for c in other["peer_calls"] if c[0] == "write") == 256 * 1024


def test_an_interrupted_upload_stops_early_with_rc_1(builder, master):
    make_file(builder / "build" / "f", 400 * BLOCK)
    dest = master / "f"
    updates, other = drive(builder, "uploadFile", {
        "workdir": "build", "workersrc": "f", "writer": str(dest), "blocksize": BLOCK,
    }, "--interrupt-after", "0")
    assert rc_of(updates) == 1
    assert dest.stat().st_size < 400 * BLOCK
    assert values(updates, "elapsed") == []
    assert other["complete"] is None


@pytest.mark.parametrize("args", [
    {"workdir": "build", "workersrc": "f"},
    {"workdir": "build", "writer": "/tmp/x"},
    {"workdir": "build", "workersrc": "f", "writer": "/tmp/x", "blocksize": 0},
])
def test_upload_without_its_required_arguments_is_refused(builder, args):
    updates, other = drive(builder, "uploadFile", args)
    assert updates == []
    assert other["refused"].startswith("ValueError")


# ---- uploadDirectory --------------------------------------------------------------------------


def make_tree(root) -> None:
    make_file(root / "top.bin", 3 * BLOCK + 7)
    make_file(root / "a" / "b" / "deep.bin", 100)
    (root / "empty-dir").mkdir()
    (root / "a" / "tool").write_text("#!/bin/sh\n")
    (root / "a" / "tool").chmod(0o750)
    os.symlink("tool", root / "a" / "link")


def tree_of(root) -> dict:
    """Everything that must survive the trip: names, kinds, contents, modes, link targets."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", sha256(p), stat.S_IMODE(os.stat(p).st_mode))
    return out


MAGIC = {None: None, "gz": b"\x1f\x8b", "bz2": b"BZh"}


@pytest.mark.parametrize("compress", [None, "gz", "bz2"])
def test_upload_directory_recreates_the_tree(builder, master, compress):
    src = builder / "build" / "out"
    make_tree(src)
    tar = master / "upload.tar"
    updates, other = drive(builder, "uploadDirectory", {
        "workdir": "build", "workersrc": "out", "writer": str(tar), "blocksize": BLOCK,
        "maxsize": None, "compress": compress,
    })
    assert rc_of(updates) == 0
    assert other["complete"] is None
    assert tree_of(str(tar) + ".d") == tree_of(src)
    assert [c[0] for c in other["peer_calls"]][-2:] == ["close", "unpack"]  # unpack closes first
    head = tar.read_bytes()[:3]
    if MAGIC[compress]:
        assert head.startswith(MAGIC[compress])
    else:
        with tarfile.open(tar, "r:") as plain:  # really uncompressed
            assert "top.bin" in plain.getnames()
    assert values(updates, "header") == [f"sending {src}\n"]


def test_upload_directory_accepts_slavesrc(builder, master):
    make_tree(builder / "build" / "out")
    updates, _ = drive(builder, "uploadDirectory", {
        "workdir": "build", "slavesrc": "out", "writer": str(master / "t"), "blocksize": BLOCK,
        "compress": None,
    })
    assert rc_of(updates) == 0
    assert tree_of(str(master / "t") + ".d") == tree_of(builder / "build" / "out")


def test_upload_of_a_missing_directory_reports_stderr_and_rc_1(builder, master):
    updates, other = drive(builder, "uploadDirectory", {
        "workdir": "build", "workersrc": "nope", "writer": str(master / "t"), "blocksize": BLOCK,
        "compress": None,
    })
    assert rc_of(updates) == 1
    assert "Cannot read directory" in "".join(values(updates, "stderr"))
    assert other["peer_calls"] == []


def test_upload_directory_over_maxsize_is_not_unpacked(builder, master):
    make_tree(builder / "build" / "out")
    updates, other = drive(builder, "uploadDirectory", {
        "workdir": "build", "workersrc": "out", "writer": str(master / "t"), "blocksize": BLOCK,
        "compress": None, "maxsize": BLOCK,
    })
    assert rc_of(updates) == 1
    assert "Maximum filesize reached" in "".join(values(updates, "stderr"))
    assert "unpack" not in [c[0] for c in other["peer_calls"]]


def test_upload_directory_refuses_an_unknown_compression(builder, master):
    updates, other = drive(builder, "uploadDirectory", {
        "workdir": "build", "workersrc": "out", "writer": str(master / "t"), "compress": "zip",
    })
    assert updates == [] and "compress" in other["refused"]


# ---- downloadFile -----------------------------------------------------------------------------


def test_download_file_arrives_intact(builder, master):
    src = master / "payload"
    make_file(src, 7 * BLOCK + 5)
    updates, other = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "sub/dir/payload", "reader": str(src), "blocksize": BLOCK,
        "maxsize": None, "mode": None,
    })
    dest = builder / "build" / "sub" / "dir" / "payload"
    assert rc_of(updates) == 0
    assert sha256(dest) == sha256(src)
    assert other["peer_calls"][-1] == ["close"]
    assert all(c[1] <= BLOCK for c in other["peer_calls"] if c[0] == "read")
    assert os.listdir(dest.parent) == ["payload"]  # no temporary file left behind


def test_download_accepts_the_slave_era_slavedest_name(builder, master):
    make_file(master / "p", 10)
    updates, _ = drive(builder, "downloadFile", {
        "workdir": "build", "slavedest": "p", "reader": str(master / "p"), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 0
    assert (builder / "build" / "p").read_bytes() == (master / "p").read_bytes()


def test_download_applies_the_requested_mode(builder, master):
    make_file(master / "tool", 10)
    updates, _ = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "tool", "reader": str(master / "tool"),
        "blocksize": BLOCK, "mode": 0o750,
    })
    assert rc_of(updates) == 0
    assert stat.S_IMODE((builder / "build" / "tool").stat().st_mode) == 0o750


def test_download_without_mode_gets_the_umask_default(builder, master):
    make_file(master / "f", 10)
    updates, _ = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "f", "reader": str(master / "f"), "blocksize": BLOCK,
    })
    assert rc_of(updates) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((builder / "build" / "f").stat().st_mode) == 0o666 & ~mask


def test_download_beyond_maxsize_gives_rc_1(builder, master):
    make_file(master / "f", 3 * BLOCK)
    updates, other = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "f", "reader": str(master / "f"), "blocksize": BLOCK,
        "maxsize": 2 * BLOCK,
    })
    assert rc_of(updates) == 1
    assert "Maximum filesize reached" in "".join(values(updates, "stderr"))
    assert (builder / "build" / "f").stat().st_size == 2 * BLOCK
    assert other["peer_calls"][-1] == ["close"]


def test_an_interrupted_download_leaves_no_file_behind(builder, master):
    make_file(master / "f", 400 * BLOCK)
    updates, _ = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "f", "reader": str(master / "f"), "blocksize": BLOCK,
    }, "--interrupt-after", "0")
    assert rc_of(updates) == 1
    assert os.listdir(builder / "build") == []


def test_download_into_an_unwritable_place_reports_stderr_and_rc_1(builder, master):
    make_file(master / "f", 10)
    (builder / "build" / "blocker").write_text("a file, not a directory")
    updates, other = drive(builder, "downloadFile", {
        "workdir": "build", "workerdest": "blocker/f", "reader": str(master / "f"),
        "blocksize": BLOCK,
    })
    assert rc_of(updates) == 1
    assert "Cannot open file" in "".join(values(updates, "stderr"))
    assert other["peer_calls"] == [["close"]]


def test_download_without_a_reader_is_refused(builder):
    updates, other = drive(builder, "downloadFile", {"workdir": "build", "workerdest": "f"})
    assert updates == [] and "reader" in other["refused"]


# ---- against a real Buildbot 4.3 master -------------------------------------------------------

FILE_STEPS_CFG = r'''
f_fs = util.BuildFactory()
f_fs.addStep(steps.MakeDirectory(dir='build/a/b'))
f_fs.addStep(steps.ShellCommand(name='make', command=sh(
    'echo x > a/b/f.txt && mkdir -p a/c && echo y > a/c/g.txt && touch -d @1234567890 a/b/f.txt')))
f_fs.addStep(steps.CopyDirectory(src='build/a', dest='build/a2'))
f_fs.addStep(steps.FileExists(file='build/a2/b/f.txt'))
f_fs.addStep(steps.MultipleFileUpload(workersrcs=['a/**/*.txt'], glob=True,
                                      masterdest=os.path.join(_here, 'multi')))
f_fs.addStep(steps.FileUpload(workersrc='a/b/f.txt', keepstamp=True,
                              masterdest=os.path.join(_here, 'stamped.txt')))
f_fs.addStep(steps.FileDownload(mastersrc=os.path.join(_here, 'harness.json'),
                                workerdest='sub/h.json', mode=0o640))
f_fs.addStep(steps.ShellCommand(name='mode', command=sh('test "$(stat -c %a sub/h.json)" = 640')))
f_fs.addStep(steps.DirectoryUpload(workersrc='a', compress='gz',
                                   masterdest=os.path.join(_here, 'tree')))
f_fs.addStep(steps.RemoveDirectory(dir='build/a2'))
f_fs.addStep(steps.ShellCommand(name='gone', command=sh('test ! -e a2')))
# The only step allowed to fail: it turns the build into WARNINGS, nothing else may.
f_fs.addStep(steps.FileUpload(workersrc='a/b/f.txt', maxsize=1,
                              masterdest=os.path.join(_here, 'toobig.txt'),
                              flunkOnFailure=False, warnOnFailure=True))
BUILDERS.append(('b-fs', f_fs))
'''


def test_a_real_buildbot_master_runs_its_file_steps_on_a_bbx_slave(tmp_path, monkeypatch):
    from tests import realmaster
    from tests.support import BBX, Proc, run_bbx

    monkeypatch.setattr(realmaster, "MASTER_CFG", realmaster.MASTER_CFG.replace(
        "c['builders'] =", FILE_STEPS_CFG + "\nc['builders'] ="))
    master = realmaster.RealMaster.start(tmp_path / "m", worker="w1", password="pw")
    slave = None
    try:
        created = run_bbx("slave", "create", tmp_path / "s", master.address, "w1", "pw")
        assert created.returncode == 0, created.stderr
        slave = Proc([BBX, "slave", "start", tmp_path / "s"], log_path=tmp_path / "slave.out")
        slave.wait_for_output("message from master: attached", 30)
        result = master.trigger("b-fs")
    finally:
        if slave is not None:
            slave.terminate()
        master.stop()
    assert result == "WARNINGS", slave.output()[-3000:] if slave else ""
    m = tmp_path / "m"
    assert sorted(os.listdir(m / "multi")) == ["f.txt", "g.txt"]
    assert (m / "stamped.txt").stat().st_mtime == 1234567890
    assert (m / "tree" / "c" / "g.txt").read_text() == "y\n"
    assert not (m / "toobig.txt").exists()
