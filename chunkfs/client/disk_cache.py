"""Chunks kept on this client's local disk, so a remount (or a reader whose chunks fell out of
memory) reads them without asking a chunkserver.

Promises:
- One file per chunk version, `chunks/<xx>/<chunk id>.<version>`: a version's bytes never change,
  and a reader asks for the version the metaserver named at open, so a file changed elsewhere
  misses here instead of being served stale. Older versions of a chunk are dropped when a newer
  one is stored. The file holds the chunk's bytes, then its block checksums (one xxh3 per 64 KiB
  block, `checksum.block_checksums`, made from bytes that matched the chunk's checksum).
- Every hit is checked: a whole chunk against the chunk's checksum from the metaserver, a ranged
  read (`get_blocks`: a random reader's few blocks) block by block against the checksums stored
  with it. A file that fails (torn, damaged, left by another cluster on the same address, or of
  an older layout without block checksums) is deleted and counts as a miss.
- Files are written to a temporary name and renamed, without fsync: a crash can lose cached
  chunks, never return wrong ones. The index is rebuilt from the files at start, least recently
  used first (a hit touches its file's mtime).
- Disk work runs in `trio.to_thread`, but for a ranged read whose bytes are in the page cache
  (read at once, `RWF_NOWAIT`: a thread hop would cost more than the read); stores are queued to `WRITERS` writer tasks and dropped
  (not waited for) when the queue is full, so the cache never slows a reader down.
- Bounded by `capacity_bytes` (segmented LRU, see `cache_policy`); a small chunk counts as at
  least `MIN_ENTRY_BYTES`, which bounds the index's memory too.
- One mount per directory: a second mount on the same directory is refused (flock) after
  waiting 10 s for the first one to end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from pathlib import Path

import trio

from chunkfs.checksum import BLOCK_SIZE, DIGEST_SIZE, block_checksums, chunk_checksum, verify_blocks
from chunkfs.client.cache_policy import SegmentedLru
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

Key = tuple[int, int]
MIN_ENTRY_BYTES = 256 * 1024
AUTO_SHARE_OF_FREE = 0.10
AUTO_MAX_BYTES = 10 * 1024**3
QUEUED_STORES = 16
WRITERS = 2  # stores written at once: one writer thread fell behind a cold read and dropped a third
LOCK_ATTEMPTS = 100
_NAME = re.compile(r"^(\d+)\.(\d+)$")


class CacheDirError(RuntimeError):
    pass


def default_cache_dir(metaserver: str, mountpoint: Path) -> Path:
    """`/var/cache/chunkfs/<metaserver>_<mountpoint>` for root, under `$XDG_CACHE_HOME` (or
    `~/.cache`) for others: one directory per cluster and mountpoint."""
    if os.geteuid() == 0:
        base = Path("/var/cache/chunkfs")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chunkfs"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{metaserver}{mountpoint}").strip("_")
    return base / name


def auto_capacity_bytes(directory: Path) -> int:
    """10% of the free space where the cache lives, at most 10 GiB."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return min(AUTO_MAX_BYTES, int(shutil.disk_usage(probe).free * AUTO_SHARE_OF_FREE))


def _cost(size_bytes: int) -> int:
    return max(size_bytes, MIN_ENTRY_BYTES)


def _sums_bytes(length: int) -> int:
    """The block checksums' bytes after a chunk of `length` bytes in its file."""
    return DIGEST_SIZE * ((length + BLOCK_SIZE - 1) // BLOCK_SIZE)


def _chunk_bytes(file_size: int) -> int:
    """The chunk's bytes in a file of `file_size` bytes (its block checksums follow them)."""
    return file_size - DIGEST_SIZE * ((file_size + BLOCK_SIZE + DIGEST_SIZE - 1) // (BLOCK_SIZE + DIGEST_SIZE))


class DiskChunkCache:
    def __init__(self, directory: Path, capacity_bytes: int) -> None:
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        self.hits = self.misses = self.stores = self.dropped_stores = 0
        self.size_bytes = 0  # bytes of chunk files held (the policy counts small ones as more)
        self._policy: SegmentedLru[Key] = SegmentedLru(capacity_bytes)
        self._versions: dict[int, int] = {}  # chunk id -> the one version cached
        self._sizes: dict[Key, int] = {}
        self._lock_fd: int | None = None
        self._storing: set[Key] = set()  # being written by a writer
        self._send, self._receive = trio.open_memory_channel[tuple[r.ChunkRef, bytes | bytearray]](QUEUED_STORES)

    def _path(self, key: Key) -> Path:
        return self.directory / "chunks" / f"{key[0] % 256:02x}" / f"{key[0]}.{key[1]}"

    # ---- start -------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the directory (blocking: call before serving) and index what it holds."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CacheDirError(f"cannot use {self.directory}: {exc.strerror}") from None
        for attempt in range(LOCK_ATTEMPTS):  # a mount just unmounted may still be exiting
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_ATTEMPTS - 1:
                    os.close(fd)
                    raise CacheDirError(f"{self.directory} is the cache of another running mount") from None
                time.sleep(0.1)
        self._lock_fd = fd
        found = []
        for sub in (self.directory / "chunks").glob("*"):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                match = _NAME.match(entry.name)
                if match is None:
                    os.unlink(entry.path)  # an unfinished store
                    continue
                st = entry.stat()
                found.append((st.st_mtime_ns, (int(match[1]), int(match[2])), _chunk_bytes(st.st_size)))
        gone = []
        for _mtime, key, size in sorted(found):
            gone += self._index(key, size)
        self._delete(gone)
        log.info("disk cache %s: %d chunks, %d MiB of %d MiB", self.directory, len(self._sizes),
                 self.size_bytes >> 20, self.capacity_bytes >> 20)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- index (trio thread only) --------------------------------------------------------------
    def _index(self, key: Key, size: int) -> list[Key]:
        """Count `key`; returns the keys whose files must go (evicted or older versions)."""
        if key in self._sizes:
            return []
        gone = []
        older = self._versions.get(key[0])
        if older is not None and older != key[1]:
            if older > key[1]:
                return [key]
            gone.append((key[0], older))
            self._forget((key[0], older))
        self._versions[key[0]] = key[1]
        self._sizes[key] = size
        self.size_bytes += size
        for victim in self._policy.add(key, _cost(size)):
            self._forget(victim)
            gone.append(victim)
        return gone

    def _forget(self, key: Key) -> None:
        self._policy.remove(key)
        self.size_bytes -= self._sizes.pop(key, 0)
        if self._versions.get(key[0]) == key[1]:
            del self._versions[key[0]]

    # ---- reads ---------------------------------------------------------------------------------
    def holds(self, ref: r.ChunkRef) -> bool:
        """`ref` is cached here (not yet checked: `get` may still find it damaged)."""
        return (ref.chunk_id, ref.version) in self._sizes

    async def get(self, ref: r.ChunkRef) -> bytes | None:
        """The stored bytes of `ref` if cached and intact, else None."""
        key = (ref.chunk_id, ref.version)
        if key not in self._sizes:
            self.misses += 1
            return None
        data = await trio.to_thread.run_sync(self._read_verified, key, ref.length, ref.checksum)
        self._count(key, hit=data is not None)
        return data

    def _count(self, key: Key, hit: bool) -> None:
        """A read of `key` counted: a hit is a use; a miss (a bad file) forgets it."""
        if not hit:
            self._forget(key)
            self.misses += 1
            return
        if key in self._sizes:
            self._policy.touch(key)
        self.hits += 1

    def _read_verified(self, key: Key, length: int, checksum: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read(length)
        except OSError:
            return None
        if chunk_checksum(data) != checksum:
            log.warning("disk cache: %s does not match its checksum; deleted", path)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the order of use survives a restart
        return data

    async def get_blocks(self, ref: r.ChunkRef, first_block: int, blocks: int) -> bytes | bytearray | None:
        """Blocks `first_block` .. `first_block + blocks - 1` of `ref` (clipped to its length) if
        cached and intact, each checked against its stored block checksum, else None."""
        key = (ref.chunk_id, ref.version)
        if key not in self._sizes:
            self.misses += 1
            return None
        path = self._path(key)
        try:
            try:
                data = _read_blocks(path, ref.length, first_block, blocks, os.RWF_NOWAIT)
            except BlockingIOError:  # not all in the page cache: read in a thread
                data = await trio.to_thread.run_sync(_read_blocks, path, ref.length, first_block, blocks, 0)
        except OSError:  # evicted meanwhile
            self.misses += 1
            return None
        if data is None:
            log.warning("disk cache: %s does not match its block checksums; deleted", path)
            path.unlink(missing_ok=True)
        self._count(key, hit=data is not None)
        return data

    # ---- stores --------------------------------------------------------------------------------
    def store(self, ref: r.ChunkRef, data: bytes | bytearray) -> None:
        """Keep `data` (verified bytes of `ref`) once the writer gets to it; never waits."""
        if (ref.chunk_id, ref.version) in self._sizes or _cost(len(data)) > self.capacity_bytes:
            return
        try:
            self._send.send_nowait((ref, data))
        except trio.WouldBlock:
            self.dropped_stores += 1

    async def run(self) -> None:
        """The writers: store queued chunks, `WRITERS` at a time, and delete what they evict."""
        async with trio.open_nursery() as nursery:
            for _ in range(WRITERS):
                nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        async for ref, data in self._receive:
            key = (ref.chunk_id, ref.version)
            if key in self._sizes or key in self._storing:
                continue
            self._storing.add(key)
            try:
                await trio.to_thread.run_sync(self._write, key, data)
            except OSError as exc:
                self.dropped_stores += 1
                log.warning("disk cache: cannot store chunk %d v%d (%s)", key[0], key[1], exc.strerror)
                continue
            finally:
                self._storing.discard(key)
            self.stores += 1
            gone = self._index(key, len(data))
            if gone:
                await trio.to_thread.run_sync(self._delete, gone)

    def _write(self, key: Key, data: bytes | bytearray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.write(block_checksums(data))
        os.replace(tmp, path)

    async def drop(self) -> None:
        """Forget and delete every cached chunk file."""
        keys = list(self._sizes)
        for key in keys:
            self._forget(key)
        await trio.to_thread.run_sync(self._delete, keys)

    def _delete(self, keys: list[Key]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


def _read_blocks(path: Path, length: int, first_block: int, blocks: int, flags: int) -> bytes | bytearray | None:
    """Blocks of a cache file whose chunk has `length` bytes, checked against the checksums
    stored after them; None if they do not match (or the file is not of this layout).
    `flags` os.RWF_NOWAIT: BlockingIOError unless every byte is in the page cache.
    OSError if the file cannot be opened (evicted meanwhile)."""
    offset = first_block * BLOCK_SIZE
    size = max(0, min(blocks * BLOCK_SIZE, length - offset))
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != length + _sums_bytes(length):
            return None
        data = _pread(fd, size, offset, flags)
        sums = _pread(fd, _sums_bytes(size), length + first_block * DIGEST_SIZE, flags)
    except BlockingIOError:
        if flags:
            raise
        return None
    except OSError as exc:
        if flags and exc.errno == errno.EOPNOTSUPP:  # a filesystem without RWF_NOWAIT
            raise BlockingIOError from None
        return None
    finally:
        os.close(fd)
    return data if len(data) == size and verify_blocks(memoryview(data), bytes(sums), 0) is None else None


def _pread(fd: int, size: int, offset: int, flags: int) -> bytearray:
    """`size` bytes at `offset` (fewer at the end of the file); with RWF_NOWAIT, BlockingIOError
    if only some of them are in the page cache."""
    buffer = bytearray(size)
    got = os.preadv(fd, [buffer], offset, flags) if size else 0
    if got < size:
        if flags:
            raise BlockingIOError
        del buffer[got:]
    return buffer
