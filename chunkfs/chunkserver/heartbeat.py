"""Registration and heartbeats: tells the metaserver this server is alive, where it listens, how
much room it has and how many bytes it has read and written (the cluster's throughput history);
at start also which chunk versions it holds, and removes those the metaserver says no file
references."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from chunkfs.chunkserver.fencing import Fence
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.metrics import ChunkserverMetrics
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, store: ChunkStore, meta: MetaClient, address: str, interval_s: float,
                 counters: ChunkserverMetrics, on_reply: Callable[[r.HelloReply], None] = lambda reply: None,
                 report_grace_s: float = 300.0, fence: Fence | None = None) -> None:
        """`on_reply`: told every answer (it carries the chunk key, see access.py); `fence`
        learns the primary's epoch from each (fencing.py)."""
        self.store, self.meta, self.address, self.counters = store, meta, address, counters
        self.on_reply = on_reply
        self.fence = fence or Fence()
        self.interval_s, self.report_grace_s = interval_s, report_grace_s
        self.registered = False

    def hello(self, with_chunks: bool) -> r.ServerHello:
        capacity, used = self.store.capacity()
        chunks, recent = self.store.inventory(self.report_grace_s) if with_chunks else (None, None)
        return r.ServerHello(id=self.store.server_id, address=self.address, capacity_bytes=capacity,
                             used_bytes=used, chunks=chunks, recent_chunks=recent,
                             data_dirs=[str(d.root.absolute()) for d in self.store.dirs],
                             read_bytes=self.counters.read_bytes.value,
                             written_bytes=self.counters.written_bytes.value)

    async def run(self) -> None:
        while True:
            try:
                hello = await asyncio.to_thread(self.hello, not self.registered)
                reply = await self.meta.hello(hello)
                if self.fence.learn(reply.epoch):
                    await self._obey(reply)
                else:
                    log.error("a former primary metaserver answered (epoch %d; the primary's is %d): its answer "
                              "is ignored", reply.epoch, self.fence.epoch)
            except (FsError, TransportError) as exc:
                if self.registered:
                    log.warning("heartbeat failed: %s", exc)
                self.registered = False
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.interval_s)

    async def _obey(self, reply: r.HelloReply) -> None:
        self.on_reply(reply)
        if not self.registered:
            log.info("registered with the metaserver as %s (%s)", self.store.server_id, self.address)
        self.registered = True
        for chunk_id, version in reply.delete:
            if await asyncio.to_thread(self.store.delete, chunk_id, version):
                self.counters.deleted_chunks.inc()
