"""What the metaserver holds in memory, for `chunkfs status --json` (`memory`) and `/metrics`
(`chunkfs_metaserver_memory_*`).

The namespace itself lives in LMDB (mapped: the kernel's page cache, `rss_file_bytes`), so the
process's own memory (`rss_anon_bytes`) should stay flat whatever the file count; every structure
that could grow with files or clients is listed here with its bound, so a leak shows as one
number climbing. The garbage collector's passes are timed (gc.callbacks) because a long one
stalls every request the event loop serves.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chunkfs.protocol import records as r

if TYPE_CHECKING:
    from chunkfs.metaserver.app import Metaserver
    from chunkfs.metaserver.db import MetaDB


class GcPauses:
    """The longest and the last garbage-collector pass, timed from gc's own callbacks."""

    def __init__(self) -> None:
        self.max_s = self.last_s = 0.0
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.last_s = time.perf_counter() - self._started
            self.max_s = max(self.max_s, self.last_s)


GC_PAUSES = GcPauses()


def process_rss(status: Path = Path("/proc/self/status")) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process; (0, 0) where /proc lacks them."""
    anon = mapped = 0
    try:
        for line in status.read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                mapped = int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, mapped


@dataclass(frozen=True)
class ProcessMemory:
    """What /proc and LMDB say of the process's memory: read by `read_process_memory`, which may
    run in a thread (reading /proc/self/status took 0.3-1.3 ms a scrape on the event loop)."""

    rss_anon_bytes: int
    rss_file_bytes: int
    lmdb_used_bytes: int
    lmdb_map_bytes: int


def read_process_memory(db: MetaDB) -> ProcessMemory:
    anon, mapped = process_rss()
    return ProcessMemory(anon, mapped, db.used_bytes(), db.map_size_bytes())


def memory_status(m: Metaserver, process: ProcessMemory) -> r.MemoryStatus:
    """The memory section of the status: `process` as read (see `read_process_memory`), and the
    structures of the event loop's own state, read now (so: on the loop)."""
    changes, clients = m.changes.memory()
    log = m.replication
    return r.MemoryStatus(
        rss_anon_bytes=process.rss_anon_bytes, rss_file_bytes=process.rss_file_bytes,
        lmdb_map_bytes=process.lmdb_map_bytes, lmdb_used_bytes=process.lmdb_used_bytes,
        replication_log_bytes=log.kept_bytes if log else 0, replication_log_limit_bytes=log.keep_bytes if log else 0,
        replication_log_batches=log.kept_batches if log else 0,
        change_feed_changes=changes, change_feed_limit=m.changes.capacity, clients_tracked=clients,
        leases_held=m.leases.held, open_leases_held=len(m.open_leases),
        corrupt_reports=len(m.replicator.corrupt_reports),
        gc_pause_max_s=round(GC_PAUSES.max_s, 4), gc_pause_last_s=round(GC_PAUSES.last_s, 4),
    )
