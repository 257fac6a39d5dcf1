"""A chunkserver's registration: the chunk versions it holds, checked against the records
without holding up the event loop or the writer.

A registration lists every version the server holds (millions on a big server). Every step is
O(what the server holds), looked up in the version index, never a scan of the chunk table (but
for the one case below), and none runs on the event loop:

- versions with an id or version chunkfs could not have made are left out (a thread);
- the id counters move past what it holds, and those no file references and no writer may
  still commit are its garbage (`ChunkTable.unreferenced`; during a restore's quarantine they
  are kept instead): `PAGE_VERSIONS` at a time, each page its own transaction through the group
  committer, so clients' commits go on between pages;
- records that list the server for versions it no longer holds lose it
  (`Replicator.reconcile`: a count through the version index; a paged scan only when the count
  says some record is stale).

Each page stands alone: whether a version is garbage is decided in the transaction that answers
it, so splitting the list changes nothing of what is deleted.
"""

from __future__ import annotations

import asyncio

from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, Txn
from chunkfs.metaserver.quarantine import Quarantine

Version = tuple[int, int]

PAGE_VERSIONS = 10_000


class Registration:
    def __init__(self, committer: GroupCommitter, chunks: ChunkTable, quarantine: Quarantine | None) -> None:
        self.committer, self.chunks, self.quarantine = committer, chunks, quarantine

    async def in_range(self, versions: list[Version], address: str) -> list[Version]:
        return await asyncio.to_thread(self.chunks.in_range, versions, address)

    async def garbage(self, server_id: str, held: list[Version], recent: list[Version]) -> list[Version]:
        """The versions of `held` the server should delete (see the module's doc), with the id
        counters moved past `held` and `recent` (its files too young to be offered as garbage)."""
        delete: list[Version] = []
        for start in range(0, max(len(held), len(recent), 1), PAGE_VERSIONS):
            end = start + PAGE_VERSIONS
            delete += await self.committer.run(self._page, server_id, held[start:end], recent[start:end])
        return delete

    def _page(self, txn: Txn, server_id: str, held: list[Version], recent: list[Version]) -> list[Version]:
        if self.quarantine is not None:
            self.quarantine.screen(txn, server_id, held, recent)
        return self.chunks.unreferenced(txn, held)
