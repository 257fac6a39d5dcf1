"""Chunk versions several files hold (snapshots, chunkfs/metaserver/snapshots.py), in process on the
metaserver's tables: after random writes, truncates, removes, replica edits and snapshots, fsck's
sharing check finds nothing, the table counts match a scan, no server a record lists is queued
to delete that record's version, and the last holder letting a version go queues it."""

from __future__ import annotations

import random
import stat

import msgspec

from chunkfs.errors import FsError
from chunkfs.metaserver.chunk_table import ChunkRecord
from chunkfs.metaserver.db import U64x2, read_u64, u64
from chunkfs.metaserver.snapshots import Snapshots
from chunkfs.protocol import records as r
from test_metadata_counters import Tables, random_change

_servers = msgspec.msgpack.Decoder(list[str])


def inodes(t: Tables, txn) -> tuple[list[int], list[int]]:
    """(files with a name, directories) as the tables have them."""
    files, dirs = [], []
    for key, raw in txn.cursor(db=t.db.inodes):
        inode = t.namespace.decode(raw)
        if stat.S_ISDIR(inode.mode):
            dirs.append(read_u64(key))
        elif inode.nlink and stat.S_ISREG(inode.mode):
            files.append(read_u64(key))
    return files, dirs


def check(t: Tables) -> None:
    with t.db.read() as txn:
        assert t.chunks.sharing_problems(txn) == []
        assert t.namespace.counts.read(txn) == t.chunks.recount_all(txn)
        for _key, raw in txn.cursor(db=t.db.chunks):
            rec = msgspec.msgpack.decode(raw, type=ChunkRecord)
            pending = txn.get(U64x2.pack(rec.chunk_id, rec.version), db=t.db.deletions)
            assert not set(_servers.decode(pending) if pending else []) & set(rec.replicas), rec


def test_shared_versions_stay_right_through_random_changes_and_snapshots(tmp_path):
    rng = random.Random(19)
    t = Tables(tmp_path / "meta")
    snapshots = Snapshots(t.namespace, t.chunks)
    made = 0
    for step in range(500):
        try:
            with t.db.env.begin(write=True) as txn:
                live, dirs = inodes(t, txn)
                if rng.random() < 0.15 and (live or len(dirs) > 1):
                    source = rng.choice(live + dirs[1:])
                    snapshots.snapshot(txn, r.SnapshotReq(source, rng.choice(dirs), b"s%d" % rng.randrange(10**9)))
                    made += 1
                else:
                    random_change(t, rng, txn, live, dirs)
        except FsError:  # refused (a snapshot into itself, ...): rolled back
            pass
        if step % 25 == 0:
            check(t)
    check(t)
    with t.db.read() as txn:
        shared = sum(1 for _ in txn.cursor(db=t.db.holders))
    assert made > 20 and shared > 0
    with t.db.env.begin(write=True) as txn:  # every file removed: every version let go and queued
        held = {(rec.chunk_id, rec.version) for _k, raw in txn.cursor(db=t.db.chunks)
                for rec in (msgspec.msgpack.decode(raw, type=ChunkRecord),)}
        names = [(read_u64(key[:8]), bytes(key[8:]), read_u64(value)) for key, value in txn.cursor(db=t.db.dentries)]
        for parent, name, ino in names:
            raw = txn.get(u64(ino), db=t.db.inodes)
            if raw is not None and not stat.S_ISDIR(t.namespace.decode(raw).mode):
                t.namespace.remove(txn, r.RemoveReq(parent, name, False))
    with t.db.read() as txn:
        assert sum(1 for _ in txn.cursor(db=t.db.chunks)) == 0
        assert sum(1 for _ in txn.cursor(db=t.db.holders)) == 0
        assert sum(1 for _ in txn.cursor(db=t.db.versions)) == 0
        queued = {U64x2.unpack(k) for k in txn.cursor(db=t.db.deletions).iternext(values=False)}
        assert held <= queued
