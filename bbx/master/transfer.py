"""The master's ends of a file transfer step: FileWriter for uploads, FileReader for downloads.

A Build passes one to the slave's uploadFile / downloadFile command (docs/protocol.md §3.5); the
slave then calls it block by block. Disk I/O goes to a thread so the reactor never waits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from twisted.internet import threads
from twisted.spread import pb

from . import results

# Buildbot 4.3's default blocksizes for file transfers (docs/protocol.md §5.4): 256 KiB upload,
# 16 KiB download; both far below banana's 640 KiB string limit (§6).
UPLOAD_BLOCKSIZE = 256 * 1024
DOWNLOAD_BLOCKSIZE = 16 * 1024
# Transfers have no rc on some peers: Buildbot decodes None and 0 as SUCCESS (steps/transfer.py).
TRANSFER_DECODE_RC = {None: results.SUCCESS, 0: results.SUCCESS}


class FileWriter(pb.Referenceable):
    """The master's end of an upload (slave → master), passed to uploadFile as `writer`.

    The slave calls write(bytes) → None per block, then close() → None (the temporary file
    is renamed into place), and utime((atime, mtime)) → None if asked to keep the stamp
    (docs/protocol.md §3.5). Disk writes go to a thread so the reactor never waits for the disk.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=dest.parent, prefix=".bbx-upload-")
        self.fp = os.fdopen(fd, "wb")
        self.closed = False
        self.nbytes = 0

    def remote_write(self, data):
        """One block of the file (bytes; str from old peers); returns None once written."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.nbytes += len(data)
        return threads.deferToThread(self.fp.write, data).addCallback(lambda _: None)

    def remote_utime(self, accessed_modified):
        """(atime, mtime) to set on the finished file; returns None."""
        os.utime(self.dest, tuple(accessed_modified))

    def remote_close(self):
        """No more blocks: the file is moved into place; returns None."""
        if self.closed:
            return None
        self.closed = True
        self.fp.close()
        os.replace(self.tmp, self.dest)
        return None

    def remote_unpack(self):
        """Directory uploads only; bbx steps upload single files. Returns None."""
        return self.remote_close()

    def cancel(self) -> None:
        """The upload failed: never leave a truncated file behind (Buildbot's purge), even
        when the slave closed the writer before reporting the failure."""
        path = self.tmp if not self.closed else self.dest
        if not self.closed:
            self.closed = True
            self.fp.close()
        try:
            os.unlink(path)
        except OSError:
            pass


class FileReader(pb.Referenceable):
    """The master's end of a download (master → slave), passed to downloadFile as `reader`.

    The slave calls read(maxLength) → bytes (b'' at the end) until done, then close() → None
    (docs/protocol.md §3.5). Reads go to a thread.
    """

    def __init__(self, src: Path):
        self.fp = open(src, "rb")

    def remote_read(self, max_length):
        """Up to max_length bytes of the file; b'' at the end."""
        # Never more than banana's 640 KiB limit in one string, whatever the peer asks (§6).
        size = max(1, min(int(max_length), UPLOAD_BLOCKSIZE))
        return threads.deferToThread(self.fp.read, size)

    def remote_close(self):
        """The slave has the whole file; returns None."""
        self.fp.close()
        return None
