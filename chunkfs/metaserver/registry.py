"""The chunkservers the metaserver knows, whether they are alive, and where new chunks go.

A server is alive while its heartbeats keep coming (`heartbeat_timeout_s`). Addresses are kept
in LMDB so replica lists (server ids) still resolve after a metaserver restart; liveness and
free space are kept in memory and refreshed by every heartbeat.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import lmdb

from chunkfs.metaserver.db import MetaDB
from chunkfs.protocol import records as r


@dataclass
class ServerState:
    id: str
    address: str
    capacity_bytes: int = 0
    used_bytes: int = 0
    last_seen: float = 0.0  # time.monotonic() of the last heartbeat, 0 if none since start

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)


class Registry:
    def __init__(self, db: MetaDB, heartbeat_timeout_s: float) -> None:
        self.db = db
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.servers: dict[str, ServerState] = {}
        with db.read() as txn:
            for sid, address in txn.cursor(db=db.servers):
                self.servers[sid.decode()] = ServerState(sid.decode(), address.decode())

    def is_alive(self, server: ServerState, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return server.last_seen > 0 and now - server.last_seen < self.heartbeat_timeout_s

    def alive(self) -> list[ServerState]:
        now = time.monotonic()
        return [s for s in self.servers.values() if self.is_alive(s, now)]

    def alive_ids(self) -> set[str]:
        return {s.id for s in self.alive()}

    def address_map(self) -> dict[str, str]:
        return {s.id: s.address for s in self.alive()}

    def needs_saving(self, hello: r.ServerHello) -> bool:
        known = self.servers.get(hello.id)
        return known is None or known.address != hello.address

    def save(self, txn: lmdb.Transaction, hello: r.ServerHello) -> None:
        txn.put(hello.id.encode(), hello.address.encode(), db=self.db.servers)

    def heartbeat(self, hello: r.ServerHello) -> None:
        state = self.servers.setdefault(hello.id, ServerState(hello.id, hello.address))
        state.address = hello.address
        state.capacity_bytes = hello.capacity_bytes
        state.used_bytes = hello.used_bytes
        state.last_seen = time.monotonic()

    def place(self, count: int, exclude: set[str] = frozenset()) -> list[ServerState]:
        """Up to `count` distinct alive servers with room, drawn with weight by free space."""
        candidates = [s for s in self.alive() if s.id not in exclude and s.free_bytes > 0]
        chosen: list[ServerState] = []
        for _ in range(min(count, len(candidates))):
            total = sum(s.free_bytes for s in candidates)
            pick = random.uniform(0, total)
            for i, s in enumerate(candidates):
                pick -= s.free_bytes
                if pick <= 0 or i == len(candidates) - 1:
                    chosen.append(candidates.pop(i))
                    break
        return chosen

    def totals(self) -> tuple[int, int]:
        alive = self.alive()
        return sum(s.capacity_bytes for s in alive), sum(s.free_bytes for s in alive)

    def status(self) -> list[r.ServerStatus]:
        now = time.monotonic()
        return [
            r.ServerStatus(id=s.id, address=s.address, capacity_bytes=s.capacity_bytes,
                           used_bytes=s.used_bytes,
                           last_seen_s=round(now - s.last_seen, 1) if s.last_seen else -1.0,
                           alive=self.is_alive(s, now))
            for s in sorted(self.servers.values(), key=lambda s: s.address)
        ]
