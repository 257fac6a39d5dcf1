"""The change feed: what each mutation changed, for mounts to drop what their kernels cached.

Mounts let the kernel cache names and attributes for a long time (see the mount's timeouts)
because this feed tells them, within a long-poll round trip, which inodes and directory
entries another client changed. The feed is in memory: a mount that falls behind the buffer,
or a metaserver restart, is answered `reset` and the mount drops everything it can.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from chunkfs.protocol import records as r


class ChangeFeed:
    def __init__(self, capacity: int = 100_000) -> None:
        self.seq = 0
        self._log: deque[r.Change] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._clients: dict[str, float] = {}  # client id -> when it last asked for changes

    def seen(self, client_id: str) -> None:
        if client_id:
            self._clients[client_id] = time.monotonic()

    def clients_following(self, within_s: float = 60.0) -> int:
        """Mounts that asked for changes lately: each one keeps a long poll open."""
        now = time.monotonic()
        for cid, t in list(self._clients.items()):
            if now - t > within_s:
                del self._clients[cid]
        return len(self._clients)

    def publish(self, origin: str, inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
        self.seq += 1
        self._log.append(r.Change(self.seq, origin, inodes, entries))
        self._wake.set()
        self._wake = asyncio.Event()

    async def since(self, seq: int, wait_s: float) -> r.ChangeBatch:
        """Changes after `seq`, waiting up to `wait_s` for the first one."""
        if seq > self.seq or (self._log and seq < self._log[0].seq - 1):
            return r.ChangeBatch(self.seq, [], reset=True)
        if seq == self.seq and wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._wake.wait()), wait_s)
            except asyncio.TimeoutError:
                pass
        return r.ChangeBatch(self.seq, [c for c in self._log if c.seq > seq], reset=False)


def affected(op: str, req, result) -> tuple[list[int], list[tuple[int, bytes]]]:
    """The inodes whose attributes, and the entries whose targets, a mutation changed."""
    if op == "create":
        return [req.parent], [(req.parent, req.name)]
    if op == "link":
        return [req.ino, req.parent], [(req.parent, req.name)]
    if op == "remove":
        return [req.parent, result], [(req.parent, req.name)]
    if op == "rename":
        return [req.old_parent, req.new_parent, *result], [(req.old_parent, req.old_name),
                                                          (req.new_parent, req.new_name)]
    return [req.ino], []
