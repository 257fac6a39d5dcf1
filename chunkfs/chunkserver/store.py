"""Chunk versions on local disk.

One file per chunk version, `chunks/<last 2 hex of id>/<id>_<version>.chunk`: a 4 KiB header
(magic, data length, xxh3 of the data, one xxh3 per 64 KiB block) followed by the data. A write
goes to a temporary file, is fsynced and renamed into place (and the directory fsynced), so a
chunk file is always whole. Every read re-verifies the blocks it returns; a mismatch is reported
as corruption, never as data.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import time
import uuid
from pathlib import Path

from chunkfs import CHUNK_SIZE
from chunkfs.checksum import BLOCK_SIZE, DIGEST_SIZE, block_checksums, chunk_checksum, verify_blocks
from chunkfs.errors import FsError

log = logging.getLogger(__name__)

MAGIC = b"CHUNKFS1"
HEADER_SIZE = 4096
_HEAD = struct.Struct(">8sQ16s")
MAX_BLOCKS = CHUNK_SIZE // BLOCK_SIZE


class CorruptChunk(FsError):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks_dir = root / "chunks"
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.server_id = self._load_server_id()
        sizes = [p.stat().st_size for p in self.chunks_dir.glob("*/*.chunk")]
        self.used_bytes = sum(sizes)
        self.chunk_count = len(sizes)
        for tmp in self.chunks_dir.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)

    def _load_server_id(self) -> str:
        path = self.root / "server_id"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex + "\n")
            os.replace(tmp, path)
        return path.read_text().strip()

    def path(self, chunk_id: int, version: int) -> Path:
        return self.chunks_dir / f"{chunk_id & 0xff:02x}" / f"{chunk_id:016x}_{version:016x}.chunk"

    def capacity(self) -> tuple[int, int]:
        """(capacity, used): capacity is what chunks use plus what the disk still has free."""
        usage = shutil.disk_usage(self.root)
        return self.used_bytes + usage.free, self.used_bytes

    # ---- blocking work, run in threads --------------------------------------------------------
    def write(self, chunk_id: int, version: int, data: bytes, checksum: str) -> None:
        if len(data) > CHUNK_SIZE:
            raise FsError(errno.EFBIG, f"chunk of {len(data)} bytes is over {CHUNK_SIZE}")
        if chunk_checksum(data) != checksum:
            raise FsError(errno.EBADMSG, "data does not match its checksum (damaged in transit)")
        path = self.path(chunk_id, version)
        path.parent.mkdir(exist_ok=True)
        header = _HEAD.pack(MAGIC, len(data), checksum.encode()) + block_checksums(data)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header.ljust(HEADER_SIZE, b"\0"))
            view = memoryview(data)
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
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if not existed:
            self.used_bytes += HEADER_SIZE + len(data)
            self.chunk_count += 1

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
        self.write(chunk_id, version, bytes(data), checksum)
        return checksum

    def read(self, chunk_id: int, version: int) -> bytes:
        path = self.path(chunk_id, version)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise FsError(errno.ENOENT, f"no chunk {chunk_id} version {version} here") from None
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

    def delete(self, chunk_id: int, version: int) -> bool:
        path = self.path(chunk_id, version)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        self.used_bytes -= size
        self.chunk_count -= 1
        return True

    def inventory(self, older_than_s: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every chunk version on disk: (those not modified in the last `older_than_s` seconds,
        those that were)."""
        cutoff = time.time() - older_than_s
        old, recent = [], []
        for path in self.chunks_dir.glob("*/*.chunk"):
            try:
                modified = path.stat().st_mtime
                cid, ver = path.stem.split("_")
                (recent if modified > cutoff else old).append((int(cid, 16), int(ver, 16)))
            except (OSError, ValueError):
                continue
        return old, recent
