"""Chunk versions on local disk.

One file per chunk version, `chunks/<last 2 hex of id>/<id>_<version>.chunk`: a 4 KiB header
(magic, data length, xxh3 of the data, one xxh3 per 64 KiB block) followed by the data. A write
goes to a temporary file, is fsynced and renamed into place (and the directory fsynced), so a
chunk file is always whole. Every read re-verifies the blocks it returns; a mismatch is reported
as corruption, never as data.

A store may span several data directories, one per disk: a new chunk version goes to the one
with the most free space, reads and deletes look in each, and every directory carries the
server's id so a disk of another server is refused at start.

`read_blocks` reads and verifies only the blocks a ranged read asks for, and returns their
block checksums and the chunk checksum of the header with them, so the mount checks what arrives
against them; given the checksum the metaserver recorded for the version, it refuses to serve
a file whose header names another: its block checksums are not that version's. That refusal is not reported as corruption: the checksum comes from the client, and
a client's word (wrong, or hostile) must never take a sound copy out of the cluster.

`open_data` is the other way to read: the data of a chunk file, unverified, for sending with
`sendfile` to a client that checks the whole chunk's checksum itself (end to end) and asks
again with verification if it does not match; the scrubber still verifies every block at rest.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chunkfs import CHUNK_SIZE
from chunkfs.checksum import BLOCK_SIZE, DIGEST_SIZE, checksums_of_pieces, chunk_checksum, verify_blocks
from chunkfs.durable_files import replace_durably
from chunkfs.errors import FsError
from chunkfs.protocol.limits import in_id_range

log = logging.getLogger(__name__)

MAGIC = b"CHUNKFS1"
HEADER_SIZE = 4096
_HEAD = struct.Struct(">8sQ16s")
MAX_BLOCKS = CHUNK_SIZE // BLOCK_SIZE


def _pread(fd: int, length: int, offset: int, cached_only: bool) -> bytes | None:
    """`length` bytes at `offset` (fewer at the end of the file); with `cached_only`, None if
    they are not all in the page cache."""
    if not cached_only:
        return os.pread(fd, length, offset)
    buffer = bytearray(length)
    try:
        got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return None
    if got < length and got < os.fstat(fd).st_size - offset:
        return None  # partly cached: read it all in a thread
    return bytes(memoryview(buffer)[:got])


@dataclass(frozen=True)
class BlockRead:
    """What a ranged read found: the data, its blocks' xxh3s (8 bytes a block) and the chunk
    checksum in the file's header (the one the data was checked against when it was stored)."""

    data: bytes
    block_sums: bytes
    chunk_checksum: str


class CorruptChunk(FsError):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@dataclass
class DirUsage:
    dir: str
    chunks: int
    used_bytes: int  # what its chunk files take
    free_bytes: int  # what its disk still has free
    disk_bytes: int  # the size of its disk


class ChunkDir:
    """One data directory: its chunk files and what they take."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks_dir = root / "chunks"
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        sizes = [p.stat().st_size for p in self.chunks_dir.glob("*/*.chunk")]
        self.used_bytes = sum(sizes)
        self.chunk_count = len(sizes)
        self.device = os.stat(root).st_dev
        for tmp in self.chunks_dir.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)

    def path(self, chunk_id: int, version: int) -> Path:
        return self.chunks_dir / f"{chunk_id & 0xff:02x}" / f"{chunk_id:016x}_{version:016x}.chunk"

    def usage(self) -> DirUsage:
        disk = shutil.disk_usage(self.root)
        return DirUsage(str(self.root), self.chunk_count, self.used_bytes, disk.free, disk.total)


class ChunkStore:
    def __init__(self, roots: Path | list[Path]) -> None:
        roots = [roots] if isinstance(roots, Path) else list(roots)
        if not roots:
            raise ValueError("a chunk store needs at least one data directory")
        self.dirs = [ChunkDir(root) for root in roots]
        self.server_id = self._load_server_id()
        self._reported_out_of_range: set[Path] = set()

    def _load_server_id(self) -> str:
        """The id in the data directories that have one (all must agree), written to those
        without (new or replaced disks)."""
        ids = {d.root: (d.root / "server_id").read_text().strip()
               for d in self.dirs if (d.root / "server_id").exists()}
        if len(set(ids.values())) > 1:
            listing = ", ".join(f"{root} has {sid}" for root, sid in ids.items())
            raise FsError(errno.EINVAL, f"data directories belong to different chunkservers: {listing}")
        server_id = next(iter(ids.values()), None) or uuid.uuid4().hex
        for d in self.dirs:
            if d.root not in ids:
                tmp = d.root / "server_id.tmp"
                tmp.write_text(server_id + "\n")
                os.replace(tmp, d.root / "server_id")
        return server_id

    @property
    def used_bytes(self) -> int:
        return sum(d.used_bytes for d in self.dirs)

    @property
    def chunk_count(self) -> int:
        return sum(d.chunk_count for d in self.dirs)

    def _holder(self, chunk_id: int, version: int) -> ChunkDir | None:
        return next((d for d in self.dirs if d.path(chunk_id, version).exists()), None)

    def path(self, chunk_id: int, version: int) -> Path:
        """Where the version is stored (in the first directory if nowhere)."""
        return (self._holder(chunk_id, version) or self.dirs[0]).path(chunk_id, version)

    def _dir_for_new(self) -> ChunkDir:
        if len(self.dirs) == 1:
            return self.dirs[0]
        # ties (directories sharing a disk) go to the one holding least
        return max(self.dirs, key=lambda d: (shutil.disk_usage(d.root).free, -d.used_bytes))

    def dir_usage(self) -> list[DirUsage]:
        return [d.usage() for d in self.dirs]

    def capacity(self) -> tuple[int, int]:
        """(capacity, used): capacity is what chunks use plus what the disks still have free
        (a disk holding several of the directories counted once)."""
        free = {d.device: shutil.disk_usage(d.root).free for d in self.dirs}
        used = self.used_bytes
        return used + sum(free.values()), used

    # ---- blocking work, run in threads --------------------------------------------------------
    def write(self, chunk_id: int, version: int, data: bytes | bytearray | Sequence[bytes], checksum: str) -> None:
        """Store `data` (bytes, or the pieces a request body arrived in) as the version, checked
        against `checksum`; returns once it is fsynced and renamed into place."""
        pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        length = sum(len(p) for p in pieces)
        if length > CHUNK_SIZE:
            raise FsError(errno.EFBIG, f"chunk of {length} bytes is over {CHUNK_SIZE}")
        whole, blocks = checksums_of_pieces(pieces)
        if whole != checksum:
            raise FsError(errno.EBADMSG, "data does not match its checksum (damaged in transit)")
        chunk_dir = self._holder(chunk_id, version) or self._dir_for_new()
        path = chunk_dir.path(chunk_id, version)
        if not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True)
        header = _HEAD.pack(MAGIC, length, checksum.encode()) + blocks
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for piece in (header.ljust(HEADER_SIZE, b"\0"), *pieces):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise FsError(errno.ENOSPC, "chunkserver disk is full") from None
            raise
        os.close(fd)
        existed = path.exists()
        replace_durably(tmp, path)
        if not existed:
            chunk_dir.used_bytes += HEADER_SIZE + length
            chunk_dir.chunk_count += 1

    def write_patch(self, chunk_id: int, version: int, base_version: int, offset: int, piece: bytes,
                    piece_checksum: str) -> str:
        """A partial write: new version `version` = version `base_version` (verified) with
        `piece` written at `offset` (zeros fill any gap). Returns the new version's checksum."""
        if chunk_checksum(piece) != piece_checksum:
            raise FsError(errno.EBADMSG, "data does not match its checksum (damaged in transit)")
        if offset < 0 or offset + len(piece) > CHUNK_SIZE:
            raise FsError(errno.EINVAL, f"write at {offset} of {len(piece)} bytes leaves the chunk")
        data = bytearray(self.read(chunk_id, base_version))
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        data[offset:offset + len(piece)] = piece
        checksum = chunk_checksum(data)
        self.write(chunk_id, version, data, checksum)
        return checksum

    def read(self, chunk_id: int, version: int) -> bytes:
        for chunk_dir in self.dirs:
            try:
                with open(chunk_dir.path(chunk_id, version), "rb") as f:
                    raw = f.read()
                break
            except FileNotFoundError:
                continue
        else:
            raise FsError(errno.ENOENT, f"no chunk {chunk_id} version {version} here")
        if len(raw) < HEADER_SIZE:
            raise CorruptChunk(f"chunk {chunk_id} v{version}: short header")
        magic, length, _checksum = _HEAD.unpack_from(raw)
        data = memoryview(raw)[HEADER_SIZE:]
        if magic != MAGIC or length != len(data):
            raise CorruptChunk(f"chunk {chunk_id} v{version}: bad header or length")
        sums = raw[_HEAD.size:_HEAD.size + DIGEST_SIZE * ((length + BLOCK_SIZE - 1) // BLOCK_SIZE)]
        bad = verify_blocks(data, sums, 0)
        if bad is not None:
            log.error("chunk %d v%d: block %d fails its checksum", chunk_id, version, bad)
            raise CorruptChunk(f"chunk {chunk_id} v{version}: block {bad} fails its checksum")
        return raw[HEADER_SIZE:]

    def read_blocks(self, chunk_id: int, version: int, offset: int, length: int, expected_checksum: str = ""
                    ) -> BlockRead:
        """`length` bytes of the data from `offset` (clipped to the chunk's end), with their
        blocks' xxh3s and the header's chunk checksum: a ranged read. `offset` is a multiple of
        BLOCK_SIZE; only the blocks returned are read and verified (a mismatch is CorruptChunk,
        never data). `expected_checksum` (if given): the version's checksum in the chunk table;
        a header naming another is FsError EBADMSG (not reported: see the module's docstring)."""
        found = self._read_blocks(chunk_id, version, offset, length, expected_checksum, cached_only=False)
        assert found is not None  # only a cached_only read gives up
        return found

    def read_cached_blocks(self, chunk_id: int, version: int, offset: int, length: int, expected_checksum: str = ""
                           ) -> BlockRead | None:
        """As `read_blocks`, but None unless every byte needed is in the page cache
        (RWF_NOWAIT), so it can run on the event loop without waiting for a disk."""
        return self._read_blocks(chunk_id, version, offset, length, expected_checksum, cached_only=True)

    def _read_blocks(self, chunk_id: int, version: int, offset: int, length: int, expected_checksum: str,
                     cached_only: bool) -> BlockRead | None:
        if offset % BLOCK_SIZE or length <= 0:
            raise FsError(errno.EINVAL, f"a ranged read starts at a block ({BLOCK_SIZE} bytes) and is not empty")
        with self._open_chunk(chunk_id, version) as f:
            fd = f.fileno()
            head = _pread(fd, _HEAD.size + DIGEST_SIZE * MAX_BLOCKS, 0, cached_only)
            if head is None:
                return None
            size = os.fstat(fd).st_size
            if len(head) < _HEAD.size or size < HEADER_SIZE:
                raise CorruptChunk(f"chunk {chunk_id} v{version}: short header")
            magic, stored_length, stored_checksum = _HEAD.unpack_from(head)
            if magic != MAGIC or stored_length != size - HEADER_SIZE:
                raise CorruptChunk(f"chunk {chunk_id} v{version}: bad header or length")
            checksum = stored_checksum.decode("latin-1")
            if expected_checksum and checksum != expected_checksum:
                log.warning("chunk %d v%d: the header's checksum %s is not the one asked for (%s)",
                            chunk_id, version, checksum, expected_checksum)
                raise FsError(errno.EBADMSG, f"chunk {chunk_id} v{version} here has checksum {checksum}, "
                                             f"not {expected_checksum}")
            if offset >= stored_length:
                raise FsError(errno.EINVAL, f"chunk {chunk_id} v{version} has {stored_length} bytes, none at {offset}")
            length = min(length, stored_length - offset)
            data = _pread(fd, length, HEADER_SIZE + offset, cached_only)
            if data is None:
                return None
        first = offset // BLOCK_SIZE
        sums = head[_HEAD.size + DIGEST_SIZE * first:_HEAD.size + DIGEST_SIZE * (first + (length + BLOCK_SIZE - 1) // BLOCK_SIZE)]
        bad = verify_blocks(data, head[_HEAD.size:], first) if len(data) == length else first
        if bad is not None:
            log.error("chunk %d v%d: block %d fails its checksum", chunk_id, version, bad)
            raise CorruptChunk(f"chunk {chunk_id} v{version}: block {bad} fails its checksum")
        return BlockRead(data, sums, checksum)

    def _open_chunk(self, chunk_id: int, version: int) -> BinaryIO:
        """The version's chunk file, open for reading (unbuffered), from whichever directory holds it."""
        for chunk_dir in self.dirs:
            try:
                return open(chunk_dir.path(chunk_id, version), "rb", buffering=0)
            except FileNotFoundError:
                continue
        raise FsError(errno.ENOENT, f"no chunk {chunk_id} version {version} here")

    def open_data(self, chunk_id: int, version: int) -> tuple[BinaryIO, int]:
        """(the open chunk file, its data length): the data starts at HEADER_SIZE and is not
        verified here. The header is checked, and the data asked from the disk ahead (so the
        `sendfile` that follows, on the event loop, seldom waits for it). The caller closes it."""
        f = self._open_chunk(chunk_id, version)
        try:
            head = os.pread(f.fileno(), _HEAD.size, 0)
            size = os.fstat(f.fileno()).st_size
            if len(head) < _HEAD.size or size < HEADER_SIZE:
                raise CorruptChunk(f"chunk {chunk_id} v{version}: short header")
            magic, length, _checksum = _HEAD.unpack(head)
            if magic != MAGIC or length != size - HEADER_SIZE:
                raise CorruptChunk(f"chunk {chunk_id} v{version}: bad header or length")
            os.posix_fadvise(f.fileno(), HEADER_SIZE, length, os.POSIX_FADV_WILLNEED)
        except BaseException:
            f.close()
            raise
        return f, length

    def delete(self, chunk_id: int, version: int) -> bool:
        for chunk_dir in self.dirs:
            path = chunk_dir.path(chunk_id, version)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            chunk_dir.used_bytes -= size
            chunk_dir.chunk_count -= 1
            return True
        return False

    def inventory(self, older_than_s: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every chunk version on disk: (those not modified in the last `older_than_s` seconds,
        those that were)."""
        return self._split_by_age((p for d in self.dirs for p in d.chunks_dir.glob("*/*.chunk")), older_than_s)

    def inventory_of_buckets(self, buckets: range, older_than_s: float) -> tuple[list[tuple[int, int]],
                                                                                 list[tuple[int, int]]]:
        """As `inventory`, of the chunk ids whose last byte is in `buckets` only (their files are
        in those buckets' directories: a few directories read, whatever the store holds)."""
        paths = (p for d in self.dirs for b in buckets for p in (d.chunks_dir / f"{b:02x}").glob("*.chunk"))
        return self._split_by_age(paths, older_than_s)

    def _split_by_age(self, paths: Iterable[Path], older_than_s: float) -> tuple[list[tuple[int, int]],
                                                                           list[tuple[int, int]]]:
        cutoff = time.time() - older_than_s
        old: list[tuple[int, int]] = []
        recent: list[tuple[int, int]] = []
        for path in paths:
            try:
                modified = path.stat().st_mtime
                cid, ver = path.stem.split("_")
                key = int(cid, 16), int(ver, 16)
            except (OSError, ValueError):
                continue
            if not (in_id_range(key[0]) and in_id_range(key[1])):
                self._out_of_range(path)
                continue
            (recent if modified > cutoff else old).append(key)
        return old, recent

    def _out_of_range(self, path: Path) -> None:
        """A chunk file whose id or version chunkfs never hands out (stored before ids were
        checked): left on disk, never reported, logged once."""
        if path not in self._reported_out_of_range:
            self._reported_out_of_range.add(path)
            log.warning("chunk file %s has an id or version outside 1..2^63-1: not reported to the "
                        "metaserver (remove it by hand)", path)
