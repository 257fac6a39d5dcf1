"""The table counts status and /metrics show (table_counts.py): kept in the same transactions as
the changes, they match a full scan after any sequence of changes and restarts, and reading
them (the status handler) walks no table that grows with files."""

from __future__ import annotations

import errno
import random
import stat

import httpx
import msgspec
import pytest

from chunkfs.errors import FsError
from chunkfs.metaserver.app import Metaserver, cluster_status
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable, chunk_key
from chunkfs.metaserver.db import U64x2, GroupCommitter, MetaDB, u64
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.namespace import Inode, Namespace
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicas import ReplicaEdits
from chunkfs.metaserver.replicator import Replicator, ServerSets
from chunkfs.protocol import records as r

SERVERS = ["s1", "s2", "s3", "s4"]
CLIENT = "counting-client"


class Tables:
    """A metaserver's tables opened on `path`, as `chunkfs-metaserver` opens them."""

    def __init__(self, path) -> None:
        self.db = MetaDB(path, map_size_bytes=1 << 28)
        self.namespace = Namespace(self.db, 2)
        self.chunks = ChunkTable(self.db, self.namespace)
        self.edits = ReplicaEdits(self.chunks)
        with self.db.env.begin(write=True) as txn:
            self.namespace.init_root(txn)
            self.chunks.ensure_version_index(txn)
            self.namespace.counts.ensure(txn, self.chunks.recount_all)
            self.chunks.ensure_stored_bytes(txn)

    def check(self) -> None:
        with self.db.read() as txn:
            assert self.namespace.counts.read(txn) == self.chunks.recount_all(txn)
            index = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.db.versions)}
            records = {U64x2.pack(rec.chunk_id, rec.version): bytes(key) for key, raw in txn.cursor(db=self.db.chunks)
                       for rec in (msgspec.msgpack.decode(raw, type=ChunkRecord),)}
            assert index == records  # the version index names every record's version, and nothing else


def random_change(t: Tables, rng: random.Random, txn, live: list[int], dirs: list[int]) -> None:
    ns, chunks = t.namespace, t.chunks
    what = rng.choice(["create", "create", "mkdir", "write", "write", "truncate", "unlink", "goal", "replicas",
                       "inline", "concat"])
    files = [ino for ino in live if stat.S_ISREG(ns.get(txn, ino).mode)]
    if what in ("create", "mkdir") or not files:
        parent = rng.choice(dirs)
        mode = (stat.S_IFDIR | 0o755) if what == "mkdir" else (stat.S_IFREG | 0o644)
        attr = ns.create(txn, r.CreateReq(parent=parent, name=f"n{rng.randrange(10**9)}".encode(), mode=mode, uid=0, gid=0))
        (dirs if what == "mkdir" else live).append(attr.ino)
        return
    ino = rng.choice(files)
    if what == "write":
        indexes = rng.sample(range(4), rng.randint(1, 3))
        first_version, first_chunk_id = chunks.reserve(txn, CLIENT, len(indexes))
        refs = [r.ChunkRef(index=index, chunk_id=first_chunk_id + n, version=first_version + n,
                           length=rng.randint(1, 4 << 20), checksum="c", replicas=rng.sample(SERVERS, rng.randint(1, 3)))
                for n, index in enumerate(indexes)]
        size = max(ns.get(txn, ino).size, max(ref.index for ref in refs) * (4 << 20) + refs[-1].length)
        chunks.commit(txn, r.CommitReq(ino=ino, chunks=refs, size=size, mtime_ns=1), CLIENT)
    elif what == "inline":
        data = b"x" * rng.randint(0, 1000)
        chunks.commit(txn, r.CommitReq(ino=ino, chunks=[], size=len(data), mtime_ns=1, inline=data), CLIENT)
    elif what == "truncate":
        ns.setattr(txn, r.SetattrReq(ino=ino, size=rng.randint(0, 9 << 20)), chunks.truncate)
    elif what == "unlink":
        parent, name = next((p, k[8:]) for p in dirs for k, v in txn.cursor(db=t.db.dentries)
                            if k[:8] == u64(p) and v == u64(ino))
        ns.remove(txn, r.RemoveReq(parent, name, False))
        live.remove(ino)
    elif what == "concat":  # refused (EINVAL) unless the boundaries are whole chunks; then chunks move
        sources = rng.sample([f for f in files if f != ino], min(len(files) - 1, rng.randint(1, 2)))
        if sources and rng.random() < 0.7:  # most of the time: boundaries made whole chunks first
            for aligned in [ino, *sources[:-1]]:
                ns.setattr(txn, r.SetattrReq(ino=aligned, size=rng.randint(0, 2) * (4 << 20)), chunks.truncate)
        if sources:
            chunks.concat(txn, r.ConcatReq(ino=ino, sources=sources, mtime_ns=1))
    elif what == "goal":
        ns.set_goal(txn, r.GoalReq(rng.choice(dirs), rng.randint(1, 4), recursive=True))
    else:  # re-replication adds a copy, trims, or drops a server's copies
        records = chunks.records(txn, ino)
        if records:
            index, rec = rng.choice(records)
            key = chunk_key(ino, index)
            spare = [s for s in SERVERS if s not in rec.replicas]
            if spare and rng.random() < 0.5:
                t.edits.add(txn, key, rec.chunk_id, rec.version, rng.choice(spare))
            elif len(rec.replicas) > 1:
                t.edits.trim(txn, key, rec.chunk_id, rec.version, rec.replicas[:1])


def ino_exists(t: Tables, ino: int) -> bool:
    with t.db.read() as txn:
        return txn.get(u64(ino), db=t.db.inodes) is not None


def test_counts_match_a_full_scan_after_random_changes_and_restarts(tmp_path):
    rng = random.Random(24)
    t = Tables(tmp_path / "meta")
    live: list[int] = []
    dirs = [1]
    for step in range(600):
        try:
            with t.db.env.begin(write=True) as txn:
                random_change(t, rng, txn, live, dirs)
        except FsError:  # a change refused (EISDIR, ...) rolls back with its counts
            live[:] = [ino for ino in live if ino_exists(t, ino)]
        if step % 50 == 0:
            t.check()
        if step % 150 == 149:  # a restart: the counts are on disk, not rebuilt
            t.db.close()
            t = Tables(tmp_path / "meta")
            t.check()
    t.check()
    with t.db.read() as txn:
        counts = t.namespace.counts.read(txn)
    assert counts.files > 10 and counts.chunks > 10 and counts.directories > 1 and counts.replicas


def test_a_database_without_counts_is_counted_once_at_start(tmp_path):
    t = Tables(tmp_path / "meta")
    with t.db.env.begin(write=True) as txn:
        for ino in range(2, 102):
            t.namespace.create(txn, r.CreateReq(parent=1, name=b"f%d" % ino, mode=stat.S_IFREG | 0o644, uid=0, gid=0))
            version, chunk_id = t.chunks.reserve(txn, CLIENT, 1)
            t.chunks.commit(txn, r.CommitReq(ino=ino, size=5, mtime_ns=1, chunks=[
                r.ChunkRef(index=0, chunk_id=chunk_id, version=version, length=5, checksum="c", replicas=["s1"])]),
                CLIENT)
            if ino == 50:
                fiftieth = (chunk_id, version)
        cursor = txn.cursor(db=t.db.counters)  # as an older metaserver left it: no counts, no index
        while cursor.set_range(b"count.") and cursor.key().startswith(b"count."):
            cursor.delete()
        txn.delete(b"index.versions", db=t.db.counters)
        txn.drop(t.db.versions, delete=False)
    t.db.close()
    t = Tables(tmp_path / "meta")
    with t.db.read() as txn:
        assert t.namespace.counts.read(txn).files == 100
        assert t.chunks.referenced(txn, *fiftieth) and not t.chunks.referenced(txn, fiftieth[0], fiftieth[1] + 10**6)
    t.check()


def test_chunks_under_goal_come_from_the_replicators_scan(tmp_path):
    t = Tables(tmp_path / "meta")
    with t.db.env.begin(write=True) as txn:
        d = t.namespace.create(txn, r.CreateReq(parent=1, name=b"d", mode=stat.S_IFDIR | 0o755, uid=0, gid=0)).ino
        for i in range(30):
            ino = t.namespace.create(txn, r.CreateReq(parent=d, name=b"f%d" % i, mode=stat.S_IFREG | 0o644, uid=0, gid=0)).ino
            version, chunk_id = t.chunks.reserve(txn, CLIENT, 1)
            t.chunks.commit(txn, r.CommitReq(ino=ino, size=5, mtime_ns=1, chunks=[
                r.ChunkRef(index=0, chunk_id=chunk_id, version=version, length=5, checksum="c",
                           replicas=SERVERS[: 1 + i % 3])]), CLIENT)
    replicator = Replicator(t.db, None, t.chunks, None, None, None, 1.0, 1)  # type: ignore[arg-type]
    alive = {"s1", "s2"}
    servers = ServerSets(healthy=alive, alive=alive, writable=alive, free={})
    below_goal = replicator._scan(servers, 5)[-1]
    with t.db.read() as txn:  # goal 2 (the default): replicas on live servers fewer than 2
        expected = sum(1 for _k, raw in txn.cursor(db=t.db.chunks)
                       if len(alive & set(msgspec.msgpack.decode(raw, type=ChunkRecord).replicas)) < 2)
    assert below_goal == expected == 10


class CountingTxn:
    """A read transaction (`with db.read()`) that counts what is read through it, table by table."""

    def __init__(self, read, names) -> None:
        self.read, self.names, self.cursors, self.gets = read, names, [], 0

    def cursor(self, db=None):
        self.cursors.append(self.names[db])
        return self.txn.cursor(db=db)

    def get(self, key, default=None, db=None):
        self.gets += 1
        return self.txn.get(key, default, db=db)

    def __getattr__(self, name):
        return getattr(self.txn, name)

    def __enter__(self):
        self.txn = self.read.__enter__()
        return self

    def __exit__(self, *exc):
        return self.read.__exit__(*exc)


@pytest.fixture
def big_metaserver(tmp_path):
    """A metaserver's state over 20,000 files with a chunk each, written straight into LMDB."""
    t = Tables(tmp_path / "meta")
    enc = msgspec.msgpack.Encoder()
    with t.db.env.begin(write=True) as txn:
        for ino in range(2, 20_002):
            txn.put(u64(ino), enc.encode(Inode(stat.S_IFREG | 0o644, 0, 0, 10, 0, 0, 0, 1)), db=t.db.inodes)
            txn.put(u64(1) + b"f%d" % ino, u64(ino), db=t.db.dentries)
            txn.put(chunk_key(ino, 0), enc.encode(ChunkRecord(ino, ino, 10, "c", ["s1", "s2"])), db=t.db.chunks)
        t.namespace.counts.write(txn, t.chunks.recount_all(txn))
    committer = GroupCommitter(t.db)
    registry = Registry(t.db, 10.0)
    deleter = Deleter(t.db, committer, t.chunks, registry, None, 5.0)  # type: ignore[arg-type]
    replicator = Replicator(t.db, committer, t.chunks, registry, None, deleter, 1.0, 1)  # type: ignore[arg-type]
    m = Metaserver(t.db, committer, t.namespace, t.chunks, registry, deleter, 60.0, replicator)
    yield m
    committer.stop()
    t.db.close()


def test_the_status_reads_counts_and_walks_no_table_that_grows_with_files(big_metaserver):
    m = big_metaserver
    names = {handle: name for name, handle in vars(m.db).items() if isinstance(handle, type(m.db.counters))}
    opened: list[CountingTxn] = []
    read = m.db.read
    m.db.read = lambda: opened.append(CountingTxn(read(), names)) or opened[-1]  # type: ignore[method-assign]
    status = cluster_status(m)
    assert status.files == 20_000 and status.chunks == 20_000 and status.file_bytes == 200_000
    assert opened and all(set(t.cursors) <= {"counters"} for t in opened), [t.cursors for t in opened]
    assert sum(t.gets for t in opened) <= 10


def test_status_and_metrics_show_the_metaservers_memory(cluster):
    (cluster.mnt / "memory-probe").write_bytes(b"x")
    memory = cluster.status()["memory"]
    assert memory["rss_anon_bytes"] > 0 and memory["lmdb_used_bytes"] > 0
    assert memory["lmdb_map_bytes"] >= memory["lmdb_used_bytes"]
    assert memory["replication_log_bytes"] == 0  # no standby follows this cluster
    scrape = httpx.get(f"http://{cluster.metaserver}/metrics").text
    for name in memory:
        assert f"chunkfs_metaserver_memory_{name} " in scrape, name


def test_a_commit_sets_its_xattrs_in_its_transaction(tmp_path):
    """A commit carrying its create, inline content and user.* xattrs makes the file with all of
    them (the gateway stores an object so); one refused (a name that is no user.* attribute, a
    create over an existing name) changes nothing."""
    t = Tables(tmp_path / "meta")
    with t.db.env.begin(write=True) as txn:
        ino = t.namespace.reserve_inodes(txn, 2)
        create = r.CreateReq(parent=1, name=b"obj", mode=stat.S_IFREG | 0o666, uid=7, gid=7, ino=ino)
        attr = t.chunks.commit(txn, r.CommitReq(ino=ino, size=3, mtime_ns=5, chunks=[], inline=b"abc", create=create,
                                                xattrs=[(b"user.s3.etag", b"e 3 5"), (b"user.s3.meta.a", b"b")]), CLIENT)
        assert (attr.size, attr.mtime_ns, attr.has_xattrs, attr.uid) == (3, 5, True, 7)
        assert sorted(t.namespace.listxattr(txn, ino)) == [b"user.s3.etag", b"user.s3.meta.a"]
        assert t.namespace.getxattr(txn, ino, b"user.s3.etag") == b"e 3 5"
    with pytest.raises(FsError) as refused:
        r.CommitReq(ino=ino, size=0, mtime_ns=1, chunks=[], xattrs=[(b"system.posix_acl_access", b"x")])
    assert refused.value.errno == errno.EINVAL
    again = r.CreateReq(parent=1, name=b"obj", mode=stat.S_IFREG | 0o666, uid=0, gid=0, ino=ino + 1)
    with pytest.raises(FsError), t.db.env.begin(write=True) as txn:
        t.chunks.commit(txn, r.CommitReq(ino=ino + 1, size=0, mtime_ns=1, chunks=[], inline=b"", create=again,
                                         xattrs=[(b"user.x", b"y")]), CLIENT)
    with t.db.env.begin() as txn:
        assert t.namespace.child(txn, 1, b"obj") == ino and not t.namespace.exists(txn, ino + 1)
    t.db.close()
