"""`AsyncFile`: a file opened through the Python API, on trio.

Binary only, with a position of its own, like a file object of `open(path, "rb")`. It is a
handle on the client's one open file of the inode (the mount's and the API's share it), so
its promises are the writer's and the reader's: reads see this client's writes at once;
`flush()` and `close()` return when what was written is durable on its replicas and committed
(like `fsync`); another client sees it from its next `open` on (close-to-open).
A call on a closed file raises ValueError, as `io` does. `lock`/`unlock` take byte-range locks
that hold between every client (mounts and API), as fcntl's do.
"""

from __future__ import annotations

import errno
import io
import os

from chunkfs.client.core import Client
from chunkfs.client.open_file import OpenFile
from chunkfs.client.os_errors import raises_os_errors
from chunkfs.errors import FsError
from chunkfs.protocol import records as r

LINE_PIECE_BYTES = 64 * 1024  # what readline asks the reader for at a time
MODES = {  # mode -> (readable, writable, create, truncate, exclusive, append)
    "rb": (True, False, False, False, False, False),
    "r+b": (True, True, False, False, False, False),
    "wb": (False, True, True, True, False, False),
    "w+b": (True, True, True, True, False, False),
    "xb": (False, True, True, False, True, False),
    "x+b": (True, True, True, False, True, False),
    "ab": (False, True, True, False, False, True),
    "a+b": (True, True, True, False, False, True),
}


def normal_mode(mode: str) -> str:
    """`mode` spelled as MODES has it ("br" -> "rb", "rb+" -> "r+b"); ValueError for text modes."""
    letters = set(mode)
    if len(letters) != len(mode) or "b" not in letters or not letters <= set("rwxab+") \
            or len(letters & set("rwxa")) != 1:
        raise ValueError(f"invalid mode {mode!r}: chunkfs files are binary (rb, wb, ab, xb, r+b, w+b)")
    kind = (letters & set("rwxa")).pop()
    return f"{kind}+b" if "+" in letters else f"{kind}b"


class AsyncFile:
    def __init__(self, client: Client, open_file: OpenFile, name: str, mode: str) -> None:
        self._client, self.open_file = client, open_file
        self.name, self.mode = name, mode
        self._readable, self._writable, *_unused, self._append = MODES[mode]
        self._position = 0
        self.closed = False

    # ---- what it is ----------------------------------------------------------------------------
    def readable(self) -> bool:
        self._check_open()
        return self._readable

    def writable(self) -> bool:
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    @property
    def size(self) -> int:
        """The file's size as this client sees it (with its own writes)."""
        return self.open_file.size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _check(self, readable: bool = False, writable: bool = False) -> None:
        self._check_open()
        if readable and not self._readable:
            raise io.UnsupportedOperation("File not open for reading")  # as io says
        if writable and not self._writable:
            raise io.UnsupportedOperation("File not open for writing")

    # ---- data -----------------------------------------------------------------------------------
    @raises_os_errors
    async def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes from the position (all to the end for -1 or None); b"" at the end."""
        self._check(readable=True)
        if size is None or size < 0:
            size = max(0, self.open_file.size - self._position)
        data = await self.open_file.read(self._position, size)
        self._position += len(data)
        return data

    def will_need(self, length: int) -> None:
        """The next `length` bytes from the position will be read soon: their chunks are
        fetched now, in the background (as posix_fadvise(WILLNEED); only a hint)."""
        self._check(readable=True)
        self.open_file.reader.will_need(self._position, self._position + length)

    @raises_os_errors
    async def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next b"\\n" (at most `size` bytes); b"" at the end."""
        self._check(readable=True)
        limit = self.open_file.size - self._position if size is None or size < 0 else size
        line = bytearray()
        while len(line) < limit:
            piece = await self.open_file.read(self._position, min(LINE_PIECE_BYTES, limit - len(line)))
            if not piece:
                break
            end = piece.find(b"\n")
            piece = piece if end < 0 else piece[: end + 1]
            line += piece
            self._position += len(piece)
            if end >= 0:
                break
        return bytes(line)

    async def readall(self) -> bytes:
        return await self.read(-1)

    @raises_os_errors
    async def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        data = await self.read(len(view))
        view[: len(data)] = data
        return len(data)

    @raises_os_errors
    async def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check(writable=True)
        if self._append:
            self._position = self.open_file.size
        written = await self.open_file.write(self._position, data)
        self._position += written
        return written

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self.open_file.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._position = position
        return position

    @raises_os_errors
    async def truncate(self, size: int | None = None) -> int:
        """Cut (or extend with zeros) the file to `size` (the position if None); the position stays."""
        self._check(writable=True)
        size = self._position if size is None else size
        if size < 0:
            raise OSError(errno.EINVAL, "negative size")
        await self.open_file.truncate(size, None)
        return size

    @raises_os_errors
    async def flush(self) -> None:
        """Durable, like fsync: what was written is stored on its replicas and committed."""
        self._check_open()
        if self._writable:
            await self.open_file.flush()

    @raises_os_errors
    async def flush_with_xattrs(self, xattrs: dict[str, bytes]) -> None:
        """As `flush`, with these user.* xattrs set in the same commit (one call, one
        transaction): the file has its content and them at once, or neither. The commit stamps
        the file with `mtime_ns`."""
        self._check(writable=True)
        self.open_file.set_at_commit({os.fsencode(name): value for name, value in xattrs.items()})
        await self.open_file.flush()

    @property
    def mtime_ns(self) -> int:
        """The modification time the file has here (with this client's writes): what its next
        commit stores."""
        return self.open_file.mtime_ns

    @raises_os_errors
    async def lock(self, exclusive: bool = True, *, blocking: bool = True, start: int = 0, length: int = 0) -> None:
        """Lock bytes `start` .. `start + length - 1` (`length` 0: to the end, however the file
        grows), shared or exclusive, as fcntl's F_SETLKW (F_SETLK if not `blocking`: a conflict is
        BlockingIOError), for every client of the cluster. The owner is this file object (as an
        OFD lock: another file object conflicts, also in this process); its locks go at close.
        Taking a lock reads what the last holder committed; `unlock` commits first."""
        await self._lock(r.F_WRLCK if exclusive else r.F_RDLCK, blocking, start, length)

    @raises_os_errors
    async def unlock(self, start: int = 0, length: int = 0) -> None:
        await self._lock(r.F_UNLCK, False, start, length)

    async def _lock(self, lock_type: int, blocking: bool, start: int, length: int) -> None:
        self._check_open()
        if start < 0 or length < 0:
            raise FsError(errno.EINVAL, "a lock's start and length are not negative")
        end = r.OFFSET_MAX if length == 0 else start + length - 1
        await self._client.lock(self.open_file, r.LockReq(ino=self.open_file.ino, owner=id(self), type=lock_type,
                                                          start=start, end=min(end, r.OFFSET_MAX), pid=os.getpid(),
                                                          wait=blocking))

    @raises_os_errors
    async def aclose(self) -> None:
        """Durable (the last close of the inode on this client commits it). A second close does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._client.release(self.open_file)
        finally:
            await self._client.locks.drop_posix(self.open_file.ino, id(self))

    close = aclose

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<chunkfs AsyncFile {self.name!r} mode={self.mode!r}{' closed' if self.closed else ''}>"
