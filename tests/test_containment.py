"""Finding where cgroups can be made: /proc/self/mountinfo and /proc/self/cgroup as files."""

from __future__ import annotations

from bbx.slave import cgroup as cg
from bbx.slave.containment import slave_key

MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 {root} /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""


def test_the_cgroup2_mount_is_found_among_v1_mounts_with_its_escapes(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO.format(root="/"))
    assert cg.cgroup2_mount(str(path)) == ("/sys/fs/cgroup/my unified", "/")


def test_no_cgroup2_mount_means_none(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text("24 30 0:22 / /sys rw - sysfs sysfs rw\n")
    assert cg.cgroup2_mount(str(path)) is None
    assert cg.cgroup2_mount(str(tmp_path / "missing")) is None


def test_own_cgroup_reads_the_v2_line_of_a_hybrid_host(tmp_path):
    path = tmp_path / "cgroup"
    path.write_text("9:name=systemd:/\n4:memory:/x/y\n0::/system.slice/bbx-slave.service\n")
    assert cg.own_cgroup(str(path)) == "/system.slice/bbx-slave.service"
    path.write_text("4:memory:/x/y\n")
    assert cg.own_cgroup(str(path)) is None


def test_the_slave_key_is_stable_and_names_the_directory(tmp_path):
    assert slave_key(str(tmp_path)) == slave_key(str(tmp_path / "." ))
    assert slave_key(str(tmp_path / "a")) != slave_key(str(tmp_path / "b"))
    assert len(slave_key(str(tmp_path))) == 12
