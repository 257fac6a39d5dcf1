"""Scrub: re-reads every stored chunk in the background, at a bounded rate, and verifies its block
checksums, so a copy that rotted on disk is found before a reader needs it.

A corrupt copy, found by scrub or by a read, is reported to the metaserver, which takes it out
of its record (re-replication makes a new copy) and queues its deletion from this server. The
file is removed by that deletion, not here: a report that does not get through leaves the
metaserver's records true, and it is sent again until it does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Iterable

from chunkfs.chunkserver.store import HEADER_SIZE, ChunkStore, CorruptChunk
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)

Version = tuple[int, int]  # (chunk_id, version)

REPORT_RETRY_S = 5.0
REPORT_BATCH = 1000


class CorruptionReporter:
    """Tells the metaserver which chunk versions here fail their checksums, each file once."""

    def __init__(self, store: ChunkStore, meta: MetaClient) -> None:
        self.store, self.meta = store, meta
        self.pending: set[Version] = set()
        self.reported: dict[Version, tuple[int, int] | None] = {}  # -> (inode, mtime) of the file reported
        self.wake = asyncio.Event()

    def found(self, chunk_id: int, version: int) -> None:
        """Queue a report, unless this very file was reported already (a new copy of the same
        version, made after the deletion, is a new file and is reported again)."""
        key = (chunk_id, version)
        if key in self.pending or self.reported.get(key) == self._file_id(key):
            return
        self.pending.add(key)
        self.wake.set()

    def known_corrupt(self, versions: Iterable[Version]) -> list[Version]:
        """Of `versions`, those found corrupt here whose file is still on disk (waiting to be
        reported, or reported and not deleted yet)."""
        return [key for key in versions if key in self.pending or self._reported_file_still_here(key)]

    def _reported_file_still_here(self, key: Version) -> bool:
        reported = self.reported.get(key)
        return reported is not None and reported == self._file_id(key)

    def _file_id(self, key: Version) -> tuple[int, int] | None:
        try:
            st = self.store.path(*key).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch = sorted(self.pending)[:REPORT_BATCH]
                files = {key: self._file_id(key) for key in batch}
                try:
                    await self.meta.report_corrupt(r.CorruptReport(self.store.server_id, batch))
                except (FsError, TransportError) as exc:
                    log.warning("could not report %d corrupt chunk versions yet: %s", len(batch), exc)
                    await asyncio.sleep(REPORT_RETRY_S)
                    continue
                log.warning("reported %d corrupt chunk versions to the metaserver", len(batch))
                self.pending.difference_update(batch)
                self.reported.update(files)


class Scrubber:
    def __init__(self, store: ChunkStore, reporter: CorruptionReporter, mb_per_s: float, interval_s: float) -> None:
        """`interval_s`: a pass starts at most this often (as Ceph's scrub min interval, a day by
        default): a pass every 10 s, as before, re-read a small store again and again, ~7% of a
        CPU per idle chunkserver."""
        self.store, self.reporter = store, reporter
        self.bytes_per_s = mb_per_s * 2**20
        self.interval_s = interval_s
        self.passes = 0
        self.corrupt_found = 0

    async def run(self) -> None:
        if self.bytes_per_s <= 0:
            log.info("scrubbing is off")
            return
        while True:
            started = time.monotonic()
            try:
                await self.pass_once()
            except Exception:
                log.exception("scrub pass failed; starting over later")
            await asyncio.sleep(max(1.0, self.interval_s - (time.monotonic() - started)))

    async def pass_once(self) -> int:
        """Verify every chunk version stored when the pass starts; returns how many were corrupt."""
        old, recent = await asyncio.to_thread(self.store.inventory, 0.0)
        started = time.monotonic()
        done_bytes = corrupt = 0
        for chunk_id, version in old + recent:
            size, bad = await asyncio.to_thread(verify_copy, self.store, chunk_id, version)
            if bad:
                corrupt += 1
                self.reporter.found(chunk_id, version)
            done_bytes += size
            ahead_s = started + done_bytes / self.bytes_per_s - time.monotonic()
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
        self.passes += 1
        self.corrupt_found += corrupt
        log.debug("scrub pass %d: %d chunk versions, %d bytes, %d corrupt, %.1f s", self.passes,
                  len(old) + len(recent), done_bytes, corrupt, time.monotonic() - started)
        return corrupt


def verify_copy(store: ChunkStore, chunk_id: int, version: int) -> tuple[int, bool]:
    """(bytes read, whether the copy is corrupt); a copy deleted meanwhile reads as nothing."""
    try:
        return HEADER_SIZE + len(store.read(chunk_id, version)), False
    except CorruptChunk:
        return HEADER_SIZE, True
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return 0, False
        raise


def corrupt_copies(store: ChunkStore, versions: Iterable[Version]) -> list[Version]:
    """Of `versions`, those whose copy here fails its checksums, all re-read now (blocking: run it
    in a thread; the caller reports them, as a scrub would)."""
    return [key for key in versions if verify_copy(store, *key)[1]]
