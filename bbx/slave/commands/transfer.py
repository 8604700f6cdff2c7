"""File transfers between master and slave: uploadFile, uploadDirectory, downloadFile.

The master passes a remote writer (`write`, `close`, `utime`, `unpack`) or reader (`read`,
`close`) inside the arguments (docs/protocol.md §3.5). Every remote call is awaited before the next
one, so at most one block is ever in flight and a slow master slows the transfer down.

Updates follow buildbot-worker 4.3 (commands/transfer.py): uploads send the header
"sending <path>\\n"; every transfer ends with `rc` (0, or 1 on any failure, with the reason in
`stderr` just before it) and then `elapsed` unless it was interrupted. A failed remote call
also fails the command (the master gets `complete(failure)`, docs/protocol.md §5.2), as in Buildbot.

Deliberate differences from buildbot-worker, each on the safe side:
- maxsize: a file of exactly `maxsize` bytes is complete, not "truncated" (buildbot-worker
  reports rc 1 for it); one extra byte is probed to tell the two apart.
- a directory upload that hits maxsize or is interrupted calls `close()`, not `unpack()`, so the
  master never tries to extract a cut-off tar; it purges the partial file on the failed rc.
- downloadFile writes a temporary file beside the destination and renames it into place, so
  an interrupted or failed download never leaves a half-written destination (a maxsize-truncated
  one is still put in place, as Buildbot does: its message says "truncating").
"""

from __future__ import annotations

import os
import secrets
import tarfile
import tempfile

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.spread import pb

from .fs import FsCommand

log = Logger()

# Used when the master sends no blocksize: the master's own default for uploadDirectory and
# downloadFile (docs/protocol.md §5.4).
DEFAULT_BLOCKSIZE = 16 * 1024

# Largest block sent or asked for: the master's uploadFile default, far below Banana's
# 640 KiB string limit (docs/protocol.md §6), so no block can kill the connection.
MAX_BLOCKSIZE = 256 * 1024

# Tar modes for the `compress` argument; the master unpacks with the matching 'r|...' mode
# (master/buildbot/process/remotetransfer.py DirectoryWriter).
TAR_MODES = {None: "w", "gz": "w|gz", "bz2": "w|bz2"}


def describe(exc: BaseException) -> str:
    """One line for an exception, remote ones (pb.RemoteError) named by their remote type."""
    if isinstance(exc, pb.RemoteError):
        remote_type = exc.remoteType
        if isinstance(remote_type, bytes):
            remote_type = remote_type.decode("utf-8", "replace")
        return f"{str(remote_type).rsplit('.', 1)[-1]}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _Interrupted(Exception):
    """Raised inside the tar thread to abandon the archive once the command is interrupted."""


class TransferCommand(FsCommand):
    """What the three transfers share: path, blocksize and maxsize arguments, the final status."""

    path_arg = ""  # the worker-era name of the slave-side path: workersrc / workerdest
    peer_arg = ""  # the remote helper: writer / reader

    def setup(self, args: dict) -> None:
        if self.peer_arg not in args:
            raise ValueError(f"{self.name}: missing required argument: {self.peer_arg}")
        self.peer = args[self.peer_arg]
        if self.path_arg in args:
            workdir = args.get("workdir") or ""
            target = args[self.path_arg]
            if not isinstance(target, str) or not isinstance(workdir, str):
                raise ValueError(f"{self.name}: {self.path_arg} and workdir must be strings")
            self.path = self.resolve(os.path.join(workdir, os.path.expanduser(target)))
        elif isinstance(args.get("path"), str):
            self.path = self.resolve(args["path"])
        else:
            raise ValueError(f"{self.name}: missing required argument: {self.path_arg}")
        blocksize = args.get("blocksize")
        if blocksize is None:
            blocksize = DEFAULT_BLOCKSIZE
        if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize <= 0:
            raise ValueError(f"{self.name}: blocksize must be a positive integer, not {blocksize!r}")
        self.blocksize = min(blocksize, MAX_BLOCKSIZE)
        maxsize = args.get("maxsize")
        if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 0):
            raise ValueError(f"{self.name}: maxsize must be a non-negative integer or None")
        self.maxsize = maxsize
        self.rc = 0
        self.stderr: str | None = None
        self.truncated = False

    def fail(self, message: str) -> None:
        """Record the first failure; later ones are consequences of it."""
        self.rc = 1
        if self.stderr is None:
            self.stderr = message

    def interrupt(self, why: str) -> None:
        """Stop at the next block; the command then ends with rc 1 (docs/protocol.md §6)."""
        if self.interrupted:
            return
        super().interrupt(why)
        self.rc = 1
        self.updates.add("header", f"\ncommand interrupted: {why}\n")

    def start(self) -> defer.Deferred:
        self.started_at = self.reactor.seconds()
        return defer.ensureDeferred(self._run_and_report())

    async def _run_and_report(self) -> int:
        error = None
        try:
            await self.transfer()
        except Exception as e:  # a remote call failed: report it, then fail the command
            self.fail(f"{self.name} of '{self.path}' failed: {describe(e)}")
            error = e
        if self.interrupted:
            self.rc = 1
        if self.stderr:
            self.updates.add("stderr", self.stderr + "\n")
        self.finish(self.rc)
        if error is not None:
            raise error
        return self.rc

    async def transfer(self) -> None:
        raise NotImplementedError

    async def call(self, name: str, *args):
        """One remote call, awaited. A call answered at once (a local peer) still yields one
        reactor turn, so an interrupt or a keepalive can run between blocks."""
        d = self.peer.callRemote(name, *args)
        answered_at_once = d.called
        result = await d
        if answered_at_once:
            await task.deferLater(self.reactor, 0, lambda: None)
        return result

    def allowance(self, sent: int) -> int:
        """How many bytes the next block may hold; 0 means maxsize is reached."""
        if self.maxsize is None:
            return self.blocksize
        return min(self.blocksize, self.maxsize - sent)

    async def send_blocks(self, fp) -> None:
        """Read fp to its end (or to maxsize) and `write` it to the master block by block."""
        sent = 0
        while not self.interrupted:
            length = self.allowance(sent)
            try:
                if length <= 0:
                    # A file of exactly maxsize bytes is whole; only a further byte truncates.
                    if fp.read(1):
                        self.truncated = True
                        self.fail(f"Maximum filesize reached, truncating file '{self.path}'")
                    return
                data = fp.read(length)
            except OSError as e:
                self.fail(f"Cannot read file '{self.path}' for upload: {e.strerror}")
                return
            if not data:
                return
            sent += len(data)
            await self.call("write", data)


class UploadFile(TransferCommand):
    """`uploadFile`: master sends workdir, workersrc (or slavesrc), writer, maxsize, blocksize,
    keepstamp. The slave sends header "sending <path>", calls writer.write(bytes) per block,
    writer.close(), then writer.utime((atime, mtime)) if keepstamp; then `rc` (+ `stderr`)."""

    name = "uploadFile"
    path_arg = "workersrc"
    peer_arg = "writer"

    def setup(self, args: dict) -> None:
        super().setup(args)
        self.keepstamp = bool(args.get("keepstamp", False))

    async def transfer(self) -> None:
        times = None
        fp = None
        try:
            if self.keepstamp:
                st = os.stat(self.path)
                times = (st.st_atime, st.st_mtime)
            fp = open(self.path, "rb")
        except OSError as e:
            self.fail(f"Cannot open file '{self.path}' for upload: {e.strerror}")
        self.updates.add("header", f"sending {self.path}\n")
        try:
            if fp is not None:
                await self.send_blocks(fp)
        except Exception:
            # Buildbot still closes the writer after a failed write, keeping the first error.
            await self._close_quietly()
            raise
        finally:
            if fp is not None:
                fp.close()
        await self.call("close")
        # The master's utime acts on the renamed destination, so it must follow close()
        # (buildbot_worker/commands/transfer.py, master remotetransfer.FileWriter).
        if times is not None and not self.interrupted:
            await self.call("utime", times)

    async def _close_quietly(self) -> None:
        try:
            await self.peer.callRemote("close")
        except Exception as e:
            log.info("ignoring the writer's close() failure after an error: {e}", e=describe(e))


class UploadDirectory(UploadFile):
    """`uploadDirectory`: as uploadFile plus `compress` (None, 'gz', 'bz2'). The slave tars the
    directory (members relative to it, arcname ''), sends header "sending <path>", writes the
    tar in blocks, then calls writer.unpack(); then `rc` (+ `stderr`)."""

    name = "uploadDirectory"

    def setup(self, args: dict) -> None:
        super().setup(args)
        self.compress = args.get("compress")
        if self.compress not in TAR_MODES:
            raise ValueError(f"{self.name}: compress must be None, 'gz' or 'bz2', not {self.compress!r}")

    def _make_tar(self, fp) -> None:
        """Runs in a thread: write the whole tree as a tar into fp."""

        def check(member):
            if self.interrupted:
                raise _Interrupted()
            return member

        with tarfile.open(mode=TAR_MODES[self.compress], fileobj=fp) as archive:
            archive.add(self.path, arcname="", filter=check)

    async def transfer(self) -> None:
        if not os.path.isdir(self.path):
            reason = "Not a directory" if os.path.exists(self.path) else "No such file or directory"
            self.fail(f"Cannot read directory '{self.path}' for upload: {reason}")
            return
        with tempfile.TemporaryFile(prefix="bbx-transfer-") as fp:
            # Tarring a large tree is minutes of blocking disk I/O that the reactor cannot do
            # for us; on the reactor thread it would stall keepalives and every other builder.
            # tarfile offers no incremental API, so it runs in a thread (as a temp file, like
            # buildbot-worker) and only the finished archive is streamed from here.
            try:
                await threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), self._make_tar, fp
                )
            except _Interrupted:
                return
            except (OSError, tarfile.TarError) as e:
                self.fail(f"Cannot read directory '{self.path}' for upload: {e}")
                return
            fp.seek(0)
            self.updates.add("header", f"sending {self.path}\n")
            try:
                await self.send_blocks(fp)
            except Exception:
                await self._close_quietly()
                raise
        if self.truncated or self.interrupted or self.rc:
            # A cut-off tar must not be unpacked; close() lets the master discard it.
            await self.call("close")
            return
        await self.call("unpack")


class DownloadFile(TransferCommand):
    """`downloadFile`: master sends workdir, workerdest (or slavedest), reader, maxsize,
    blocksize, mode. The slave calls reader.read(blocksize) until b'', then reader.close(),
    puts the file in place (with `mode` if given); then `rc` (+ `stderr`)."""

    name = "downloadFile"
    path_arg = "workerdest"
    peer_arg = "reader"

    def setup(self, args: dict) -> None:
        super().setup(args)
        mode = args.get("mode")
        if mode is not None and (not isinstance(mode, int) or isinstance(mode, bool)):
            raise ValueError(f"{self.name}: mode must be an integer or None, not {mode!r}")
        self.mode = mode

    def _open_temp(self):
        directory, base = os.path.split(self.path)
        os.makedirs(directory, exist_ok=True)
        while True:
            name = os.path.join(directory, f".{base}.bbx-download-{secrets.token_hex(4)}")
            try:
                # 0o666 less the umask, as a plain open() of the destination would give
                # (mkstemp's 0o600 would make every downloaded file private).
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            return os.fdopen(fd, "wb"), name

    async def transfer(self) -> None:
        fp = tmp = None
        try:
            fp, tmp = self._open_temp()
        except OSError as e:
            self.fail(f"Cannot open file '{self.path}' for download: {e.strerror}")
        try:
            if fp is not None:
                await self._receive_blocks(fp)
        except Exception as e:
            # Mark the failure before the finally clause decides the temp file's fate.
            self.fail(f"{self.name} of '{self.path}' failed: {describe(e)}")
            raise
        finally:
            try:
                await self.call("close")
            except Exception as e:
                log.info("ignoring the reader's close() failure: {e}", e=describe(e))
            if fp is not None:
                self._finish_file(fp, tmp)

    async def _receive_blocks(self, fp) -> None:
        received = 0
        while not self.interrupted:
            length = self.allowance(received)
            if length <= 0:
                # Exactly maxsize bytes is a whole file; a further byte means it was cut.
                if await self.call("read", 1):
                    self.truncated = True
                    self.fail(f"Maximum filesize reached, truncating file '{self.path}'")
                return
            data = await self.call("read", length)
            if isinstance(data, str):  # master FileReader answers '' once closed
                data = data.encode("utf-8")
            if not data:
                return
            # A peer sending more than asked is trimmed: maxsize is ours to enforce.
            data = data[:length]
            received += len(data)
            try:
                fp.write(data)
            except OSError as e:
                self.fail(f"Cannot write file '{self.path}' for download: {e.strerror}")
                return

    def _finish_file(self, fp, tmp: str) -> None:
        """Rename the temp file into place when the data is good (or cut at maxsize), else drop it."""
        try:
            fp.close()
            complete = not self.interrupted and (self.rc == 0 or self.truncated)
            if not complete:
                os.unlink(tmp)
                return
            if self.mode is not None:
                os.chmod(tmp, self.mode)
            elif os.path.exists(self.path):
                # Buildbot rewrites an existing file in place, keeping its mode; so do we.
                os.chmod(tmp, os.stat(self.path).st_mode & 0o7777)
            os.replace(tmp, self.path)
        except OSError as e:
            self.fail(f"Cannot write file '{self.path}' for download: {e.strerror}")
            if os.path.exists(tmp):
                os.unlink(tmp)


COMMANDS = (UploadFile, UploadDirectory, DownloadFile)
