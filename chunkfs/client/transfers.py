"""Whole-file transfers between a local file and the cluster, for `put_file` and `get_file`.

Promises:
- An upload goes through the writer (chunks uploaded to their replicas in parallel, as a mount's
  writes) under a temporary name beside the target (`.NAME.chunkfs-put-RANDOM`), closed
  (durable) and only then renamed onto the target: the target name never shows a half-written
  file. On any error, KeyboardInterrupt or cancellation the temporary file is removed, and its
  last close frees it and its chunks.
- The local file is read up to the size it had at the start; if its size, mtime, ctime or inode
  moved meanwhile the upload fails with OSError(EBUSY) and nothing is stored (no torn copy).
- A download reads the file in chunk-sized pieces (prefetch keeps the next chunks coming) into a
  temporary file beside the local target, renamed onto it when complete.

Speed (a 1 GiB file, as `chunkfs bench` times `put` against `cp` onto a mount): the local file
is read a chunk at a time into a new bytes object that the writer takes as it is
(`FileWriter.write` keeps a whole-chunk write without copying it) and the upload sends as it is;
a download writes the cached chunks themselves (`FileReader.read_parts`, `os.writev`) while it
reads the next ones. Each byte is copied once in this process either way, where a chunk buffer
in between cost two more copies (and their page faults); the local file's reads and writes go to
a worker thread while the uploads and prefetches go on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from chunkfs import CHUNK_SIZE, MAX_NAME_BYTES
from chunkfs.client.async_file import AsyncFile
from chunkfs.client.paths import PathLike, join, split_path
from chunkfs.client.permissions import check_sticky
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r

if TYPE_CHECKING:
    from chunkfs.client.filesystem import AsyncFilesystem

log = logging.getLogger(__name__)

TEMPORARY_MARK = b".chunkfs-put-"
WRITES_AHEAD = 2  # chunks a download has read and not yet written to the local file, at most
Progress = Callable[[int], None]  # told each time more bytes were moved: the number of new bytes


async def upload(afs: AsyncFilesystem, local_path: Path, remote_path: PathLike, progress: Progress | None,
                 exclusive: bool) -> None:
    """`local_path` stored as `remote_path`; `exclusive`: EEXIST if the target exists (also if
    it appears meanwhile)."""
    local = await trio.to_thread.run_sync(open_for_reading, local_path)
    try:
        before = os.fstat(local.fileno())
        async with staged_file(afs, remote_path, exclusive) as afile:
            copied = await copy_into(local, before.st_size, afile, progress)
            after = os.fstat(local.fileno())
            if copied != before.st_size or file_version(before) != file_version(after):
                raise FsError(errno.EBUSY, f"{local_path} changed while it was read; nothing was stored "
                                           f"under {afs.canonical(remote_path)} (upload it again)")
    finally:
        local.close()


@asynccontextmanager
async def staged_file(afs: AsyncFilesystem, remote_path: PathLike, exclusive: bool = False
                      ) -> AsyncIterator[AsyncFile]:
    """A new file to write whole, under a temporary name beside `remote_path`: when the block
    ends normally it is closed (durable) and renamed onto `remote_path`; when it raises (or is
    cancelled) it is removed and nothing appears. Every door that stores whole files (put_file,
    the gateway's PUT) goes through here. `exclusive`: EEXIST if the target exists."""
    directory, name = await afs.parent_of(remote_path, errno.EISDIR)
    existing = await afs.entry_in(directory, name)
    if existing is not None and exclusive:
        raise FsError(errno.EEXIST, "file exists")
    if existing is not None and stat.S_ISDIR(existing.mode):
        raise FsError(errno.EISDIR, "is a directory")
    if existing is not None:  # the rename below replaces it: as `mv` over it would be checked
        check_sticky(directory, existing, afs.identity, "replace")
    temp_name = _temporary_name(name)
    afile = await afs.open(join([*split_path(remote_path)[:-1], temp_name]), "xb")
    try:
        yield afile
        await afile.aclose()
        await afs.client.rename(directory.ino, temp_name, directory.ino, name,
                                r.RENAME_NOREPLACE if exclusive else 0)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(2 * afs.options.retry_s + 5):
            await _discard(afs, afile, directory.ino, temp_name)
        raise


async def store_small(afs: AsyncFilesystem, remote_path: PathLike, content: bytes, xattrs: dict[str, bytes],
                      mtime_ns: int, exclusive: bool = False) -> bool:
    """`content` (at most INLINE_MAX_BYTES) stored as `remote_path` with its user.* `xattrs`,
    all at once in one metaserver call and transaction (`Client.store_small_file`): the name
    shows the whole file, with its xattrs, or nothing changes. The same promises as
    `staged_file`'s; `mtime_ns` is the file's mtime. False, and nothing done, where that path is
    not open (no inode numbers at hand, a goal to apply): use `staged_file`."""
    if afs.options.goal is not None:
        return False
    directory, name = await afs.parent_of(remote_path, errno.EISDIR)
    await afs.may_change_entries(directory)
    if directory.mode & stat.S_ISVTX:  # replacing another's file in a sticky directory (/tmp) is refused
        existing = await afs.entry_in(directory, name)
        if existing is not None:
            check_sticky(directory, existing, afs.identity, "replace")
    stored = await afs.client.store_small_file(directory.ino, name, _temporary_name(name), content,
                                               {os.fsencode(k): v for k, v in xattrs.items()}, afs.identity,
                                               mtime_ns, r.RENAME_NOREPLACE if exclusive else 0)
    return stored is not None


def is_staged_name(name: bytes) -> bool:
    """Whether `name` is the temporary name of a file being stored (listings leave it out)."""
    return name.startswith(b".") and TEMPORARY_MARK in name


async def _discard(afs: AsyncFilesystem, afile: AsyncFile, directory: int, name: bytes) -> None:
    """A half-written upload goes: its name first, then its last close frees it and its chunks."""
    try:
        afile.open_file.drop_buffers()
        await afs.client.remove(directory, name, is_dir=False)
    except (FsError, TransportError) as exc:
        log.warning("could not remove the unfinished upload %r: %s", name, exc)
    try:
        await afile.aclose()
    except (FsError, TransportError, OSError) as exc:
        log.warning("could not close the unfinished upload %r: %s", name, exc)


async def download(afs: AsyncFilesystem, remote_path: PathLike, local_path: Path, progress: Progress | None) -> None:
    afile = await afs.open(remote_path, "rb")
    try:
        target = local_path
        temp = target.with_name(f".{target.name}.chunkfs-get-{secrets.token_hex(4)}")
        local = await trio.to_thread.run_sync(open, temp, "wb", 0)
        try:
            with local:
                await _copy_out(afile, local.fileno(), progress)
            await trio.to_thread.run_sync(os.replace, temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    finally:
        await afile.aclose()


async def _copy_out(afile: AsyncFile, fd: int, progress: Progress | None) -> None:
    """The file's bytes written to `fd`, a chunk at a time. The next chunk is read while the
    last one is written (a worker thread writes; `WRITES_AHEAD` chunks wait at most), so the
    local disk and the chunkservers work at once."""
    send, receive = trio.open_memory_channel[list[bytes | memoryview]](WRITES_AHEAD)

    async def write_all() -> None:
        async with receive:
            async for parts in receive:
                written = await trio.to_thread.run_sync(_write_parts, fd, parts)
                if progress is not None:
                    progress(written)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_all)
        async with send:
            reader, offset = afile.open_file.reader, 0
            while parts := await reader.read_parts(offset, CHUNK_SIZE):
                offset += sum(len(p) for p in parts)
                await send.send(parts)


def _temporary_name(name: bytes) -> bytes:
    suffix = TEMPORARY_MARK + secrets.token_hex(6).encode()
    return b"." + name[: MAX_NAME_BYTES - len(suffix) - 1] + suffix


def file_version(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def open_for_reading(path: Path) -> io.FileIO:
    """`path` unbuffered (each read a chunk straight into its own bytes), read-ahead widened."""
    local = io.FileIO(path, "r")
    with contextlib.suppress(OSError):  # only advice: a file that takes none is read all the same
        os.posix_fadvise(local.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return local


def _read_up_to(local: io.FileIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the file: a short read (rare on a regular file)
    would leave every later write off the chunk boundaries, and off the writer's fast path."""
    data = local.read(size) or b""
    while 0 < len(data) < size:
        more = local.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _write_parts(fd: int, parts: list[bytes | memoryview]) -> int:
    """All of `parts` written to `fd` in order, with as few calls as the kernel allows."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    while done < total:  # a short write: the rest, from where it stopped
        rest = b"".join(parts)[done:]
        done += os.write(fd, rest)
    return total


async def copy_into(local: io.FileIO, size: int, afile: AsyncFile, progress: Progress | None) -> int:
    """Copy the first `size` bytes of a local binary file into `afile` a chunk at a time
    (fewer if it ends sooner); returns the bytes copied. Each chunk is read into a new bytes
    object that the writer keeps as it is (see the module's "Speed")."""
    copied = 0
    while copied < size:
        data = await trio.to_thread.run_sync(_read_up_to, local, min(CHUNK_SIZE, size - copied))
        if not data:
            return copied
        await afile.write(data)
        copied += len(data)
        if progress is not None:
            progress(len(data))
    return copied
