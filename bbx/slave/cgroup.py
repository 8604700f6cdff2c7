"""Per-command cgroups (cgroup v2): where the slave may make them, one per command, cgroup.kill.

A process cannot leave its cgroup without write access to the cgroup tree, so a command's
cgroup holds everything it started — double-forked, setsid, `env -i` — and `cgroup.kill`
(Linux 5.14) kills all of it at once, forks in flight included.

The slave makes them under its own cgroup (from /proc/self/cgroup), which must be writable:
as root, or delegated to the slave's user (systemd `Delegate=yes`). Layout:

    <own cgroup>/bbx-<key>-<pid>/          this slave process's subtree (its *instance*)
    <own cgroup>/bbx-<key>-<pid>/<run>/    one per running command

`key` names the slave (a hash of its basedir), so a slave started again after a crash finds
the subtrees its dead predecessors left — and only those (stale_instances).

Pure os calls, no Twisted: the guard process (bbx/slave/guard.py) uses this too.
"""

from __future__ import annotations

import errno
import os
import re

MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUP = "/proc/self/cgroup"
PREFIX = "bbx-"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """(mount point, root inside the hierarchy) of the cgroup2 file system, if mounted."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # id parent major:minor root mount-point options [optional...] - fstype source super
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
            unescape = lambda s: _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), s)  # noqa: E731
            return unescape(fields[4]), unescape(fields[3])
    return None


def own_cgroup(path: str = OWN_CGROUP) -> str | None:
    """This process's cgroup v2 path ("0::/x/y" -> "/x/y"), if it has one."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def own_cgroup_dir() -> tuple[str | None, str]:
    """(directory of this process's cgroup, "") or (None, why there is none)."""
    mount = cgroup2_mount()
    if mount is None:
        return None, "no cgroup2 file system is mounted"
    point, root = mount
    own = own_cgroup()
    if own is None:
        return None, "this process has no cgroup v2 membership"
    if own.startswith("/.."):
        return None, f"this process's cgroup {own} is outside its cgroup namespace"
    if root != "/":
        if own != root and not own.startswith(root.rstrip("/") + "/"):
            return None, f"this process's cgroup {own} is not under the mounted {root}"
        own = own[len(root.rstrip("/")):] or "/"
    return os.path.normpath(point + own), ""


class Cgroup:
    """One cgroup directory: who is in it, kill them all, remove it."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def pids(self) -> set[int]:
        """Processes in this cgroup and below it (zombies are not members)."""
        found: set[int] = set()
        for top, dirs, _ in os.walk(self.path):
            try:
                with open(os.path.join(top, "cgroup.procs")) as f:
                    found.update(int(p) for p in f.read().split())
            except (OSError, ValueError):
                pass
        return found

    def populated(self) -> bool:
        """Whether a live process is in this cgroup or below (cgroup.events)."""
        try:
            with open(os.path.join(self.path, "cgroup.events")) as f:
                for line in f:
                    if line.startswith("populated "):
                        return line.split()[1] != "0"
        except FileNotFoundError:
            return False
        except OSError:
            pass
        return bool(self.pids())

    def kill(self) -> bool:
        """SIGKILL everything in this cgroup and below, atomically; False if it cannot."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")
            return True
        except FileNotFoundError:
            return False
        except OSError:
            return False

    def remove(self) -> bool:
        """Remove this cgroup and its children when empty; True once it is gone."""
        for top, dirs, _ in os.walk(self.path, topdown=False):
            try:
                os.rmdir(top)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return not os.path.exists(self.path)

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"


class CgroupTree:
    """The subtree of one slave process: one child cgroup per command."""

    def __init__(self, parent: str, key: str, instance: int) -> None:
        self.parent = parent
        self.key = key
        self.instance = instance
        self.root = Cgroup(os.path.join(parent, f"{PREFIX}{key}-{instance}"))

    @classmethod
    def create(cls, key: str, instance: int | None = None) -> tuple["CgroupTree | None", str]:
        """Make this process's subtree; (tree, "") or (None, why cgroups cannot be used)."""
        parent, why = own_cgroup_dir()
        if parent is None:
            return None, why
        tree = cls(parent, key, os.getpid() if instance is None else instance)
        try:
            os.mkdir(tree.root.path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            return None, f"cannot create a cgroup under {parent}: {e.strerror or e}"
        if not os.path.exists(os.path.join(tree.root.path, "cgroup.kill")):
            tree.root.remove()
            return None, "the kernel has no cgroup.kill (Linux 5.14 or later is needed)"
        if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
            tree.root.remove()
            return None, f"processes cannot be moved out of {parent} (its cgroup.procs is not writable)"
        return tree, ""

    def new_run(self, name: str) -> Cgroup:
        """A fresh cgroup for one command; OSError if it cannot be made."""
        group = Cgroup(os.path.join(self.root.path, name))
        os.mkdir(group.path, 0o755)
        return group

    def stale_instances(self) -> list[Cgroup]:
        """Subtrees of earlier processes of this same slave (they are all dead or dying)."""
        pattern = re.compile(re.escape(f"{PREFIX}{self.key}-") + r"(\d+)$")
        try:
            names = os.listdir(self.parent)
        except OSError:
            return []
        return [Cgroup(os.path.join(self.parent, n)) for n in sorted(names)
                if (m := pattern.match(n)) and int(m.group(1)) != self.instance]
