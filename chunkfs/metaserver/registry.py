"""The chunkservers the metaserver knows, whether they are alive, and where new chunks go.

A server is alive while its heartbeats keep coming (`heartbeat_timeout_s`). Addresses are kept
in LMDB so replica lists (server ids) still resolve after a metaserver restart; liveness and
free space are kept in memory and refreshed by every heartbeat. A server being drained (`chunkfs
drain`, kept in LMDB) gets no new chunks while the replicator moves its chunks elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from chunkfs import CHUNK_SIZE
from chunkfs.metaserver.db import MetaDB, Txn
from chunkfs.placement import weighted_order
from chunkfs.protocol import records as r

# a server with room for fewer chunks than this is full: it gets no new ones (writers already on
# their way to it that get ENOSPC move to a spare)
WRITABLE_MIN_FREE_BYTES = 2 * CHUNK_SIZE


@dataclass
class ServerState:
    id: str
    address: str
    capacity_bytes: int = 0
    used_bytes: int = 0
    last_seen: float = 0.0  # time.monotonic() of the last heartbeat, 0 if none since start
    data_dirs: tuple[str, ...] = ()  # as the server reports them

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)


UNHEARD_READABLE_S = 30.0
"""After a start, how long readers are also given the servers that have not reported yet: a
chunkserver that was waiting on a hung primary (its heartbeat's attempt time-out, 8 s) reaches a
new one late, and its replicas must still be readable meanwhile."""


class Registry:
    def __init__(self, db: MetaDB, heartbeat_timeout_s: float) -> None:
        self.db = db
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.servers: dict[str, ServerState] = {}
        self.started = time.monotonic()
        with db.read() as txn:
            for sid, address in txn.cursor(db=db.servers):
                self.servers[sid.decode()] = ServerState(sid.decode(), address.decode())
            self.draining: set[str] = {sid.decode() for sid, _ in txn.cursor(db=db.draining)}

    def is_alive(self, server: ServerState, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return server.last_seen > 0 and now - server.last_seen < self.heartbeat_timeout_s

    def alive(self) -> list[ServerState]:
        now = time.monotonic()
        return [s for s in self.servers.values() if self.is_alive(s, now)]

    def alive_ids(self) -> set[str]:
        return {s.id for s in self.alive()}

    def address_map(self) -> dict[str, str]:
        """Where readers may find replicas: the servers alive, and just after the start (a restart,
        a failover) those known that have not reported yet: they may well be alive, and a reader
        tries another replica where one is not."""
        now = time.monotonic()
        settling = now - self.started < max(self.heartbeat_timeout_s, UNHEARD_READABLE_S)
        return {s.id: s.address for s in self.servers.values()
                if self.is_alive(s, now) or (settling and s.last_seen == 0)}

    def needs_saving(self, hello: r.ServerHello) -> bool:
        known = self.servers.get(hello.id)
        return known is None or known.address != hello.address

    def save(self, txn: Txn, hello: r.ServerHello) -> None:
        txn.put(hello.id.encode(), hello.address.encode(), db=self.db.servers)

    def heartbeat(self, hello: r.ServerHello) -> None:
        state = self.servers.setdefault(hello.id, ServerState(hello.id, hello.address))
        state.address = hello.address
        state.capacity_bytes = hello.capacity_bytes
        state.used_bytes = hello.used_bytes
        state.data_dirs = tuple(hello.data_dirs)
        state.last_seen = time.monotonic()

    def settling(self) -> bool:
        """Just after the metaserver started: a server known from LMDB has not reported yet and
        may well be alive. Placing chunks now would put them on the few that reported first."""
        if time.monotonic() - self.started >= self.heartbeat_timeout_s:
            return False
        return any(s.last_seen == 0 and s.id not in self.draining for s in self.servers.values())

    def writable(self) -> list[ServerState]:
        """Alive servers that have room for new chunks and are not being drained."""
        return [s for s in self.alive() if s.free_bytes >= WRITABLE_MIN_FREE_BYTES and s.id not in self.draining]

    def place(self, count: int, exclude: Collection[str] = frozenset()) -> list[ServerState]:
        """Up to `count` distinct writable servers, drawn with weight by free space."""
        candidates = [s for s in self.writable() if s.id not in exclude]
        return weighted_order(candidates, [s.free_bytes for s in candidates])[:count]

    def find(self, name: str) -> ServerState | None:
        """The server with this id or address."""
        return self.servers.get(name) or next((s for s in self.servers.values() if s.address == name), None)

    def save_draining(self, txn: Txn, server_id: str, draining: bool) -> None:
        """Persist the flag; `draining` itself changes once that is committed (`set_draining`)."""
        if draining:
            txn.put(server_id.encode(), b"", db=self.db.draining)
        else:
            txn.delete(server_id.encode(), db=self.db.draining)

    def set_draining(self, server_id: str, draining: bool) -> None:
        if draining:
            self.draining.add(server_id)
        else:
            self.draining.discard(server_id)

    def totals(self) -> tuple[int, int]:
        alive = self.alive()
        return sum(s.capacity_bytes for s in alive), sum(s.free_bytes for s in alive)

    def status(self, chunk_counts: dict[str, int] | None = None) -> list[r.ServerStatus]:
        now = time.monotonic()
        chunk_counts = chunk_counts or {}
        return [
            r.ServerStatus(id=s.id, address=s.address, capacity_bytes=s.capacity_bytes,
                           used_bytes=s.used_bytes,
                           last_seen_s=round(now - s.last_seen, 1) if s.last_seen else -1.0,
                           alive=self.is_alive(s, now), chunks=chunk_counts.get(s.id, 0),
                           draining=s.id in self.draining, data_dirs=list(s.data_dirs))
            for s in sorted(self.servers.values(), key=lambda s: s.address)
        ]
