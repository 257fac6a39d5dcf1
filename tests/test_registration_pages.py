"""A chunkserver's registration at scale, without daemons: its chunk list is checked a page at a
time (each page its own transaction), and the records listing it for versions it no longer holds
are found from a count through the version index, the chunk table being scanned (in pages) only
when that count says some exist."""

from __future__ import annotations

import asyncio

from chunkfs.metaserver import registration
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable, chunk_key
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.quarantine import Quarantine
from chunkfs.metaserver.registration import Registration
from chunkfs.metaserver.replicas import ReplicaEdits


def table_with(tmp_path, records: dict[tuple[int, int], ChunkRecord]) -> tuple[MetaDB, ChunkTable]:
    """A chunk table holding `records` ((inode, index) -> record), written as commits write them
    (counts and version index kept)."""
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 26)
    chunks = ChunkTable(db, Namespace(db, 3))
    with db.env.begin(write=True) as txn:
        for (ino, index), record in records.items():
            chunks.write_record(txn, chunk_key(ino, index), record)
    return db, chunks


def test_stale_replicas_are_found_by_a_count_and_a_paged_scan(tmp_path):
    records = {(ino, 0): ChunkRecord(ino, 100 + ino, 10, "c", ["a", "b"] if ino % 2 else ["b"]) for ino in range(2, 40)}
    db, chunks = table_with(tmp_path, records)
    edits = ReplicaEdits(chunks)
    on_a = {(r.chunk_id, r.version) for r in records.values() if "a" in r.replicas}
    with db.read() as txn:
        assert edits.listing(txn, "a", on_a) == len(on_a) == chunks.namespace.counts.read(txn).replicas["a"]
        assert edits.listing(txn, "a", {(3, 999), (4, 104)}) == 0  # unknown version; a record not on a
        everything = edits.find(txn, lambda rec: "a" in rec.replicas)
        paged: dict = {}
        after = None
        while True:
            page, after = edits.find_page(txn, lambda rec: "a" in rec.replicas, after, 4)
            assert len(page) <= 4
            paged.update(page)
            if after is None:
                break
    assert paged == everything and set(everything) == on_a
    db.close()


def test_a_registration_list_is_checked_in_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(registration, "PAGE_VERSIONS", 3)
    db, chunks = table_with(tmp_path, {(2, 0): ChunkRecord(5, 50, 10, "c", ["a"]),
                                       (3, 0): ChunkRecord(6, 60, 10, "c", ["a"])})
    committer = GroupCommitter(db)
    held = [(5, 50), (6, 60), (7, 70), (8, 80), (5, 49), (9, 90), (10, 100)]  # 5 of them referenced by no file

    async def check() -> list:
        return await Registration(committer, chunks, Quarantine(db, committer, chunks, 3600)).garbage("a", held, [(11, 110)])

    assert sorted(asyncio.run(check())) == [(5, 49), (7, 70), (8, 80), (9, 90), (10, 100)]
    assert committer.commits == 3  # 7 versions, 3 a page
    with db.env.begin(write=True) as txn:  # the id counters are past all it holds, the recent files' too
        assert chunks.chunk_ids.take(txn) > 11 and chunks.versions.take(txn) > 110
    committer.stop()
    db.close()
