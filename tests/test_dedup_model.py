"""Dedup's reference counting (chunkfs/metaserver/dedup.py on the chunk table's holders), in
process on the metaserver's tables, against a model: a hypothesis state machine writes identical
and different content (a writer asking for stored content first, as the client core does, or
not), overwrites, truncates, unlinks (into the trash or not), snapshots, empties the trash, lets
dedup pins run out, runs the deleter and gc over a simulated chunkserver. After every step each
live file reads back from the simulated chunkserver as the model says (so no version was deleted
while a file or a pending writer holds it), fsck's sharing and dedup checks find nothing and the
table counts (stored bytes too) match a scan; at the end, once pins ran out and the deleter and
gc ran, the chunkserver holds exactly the versions some record holds."""

from __future__ import annotations

import errno
import shutil
import stat
import tempfile
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chunkfs import CHUNK_SIZE
from chunkfs.content_hash import name_and_proof
from chunkfs.errors import FsError
from chunkfs.metaserver.chunk_table import ChunkRecord
from chunkfs.metaserver.snapshots import Snapshots
from chunkfs.protocol import records as r
from test_metadata_counters import Tables

SCOPE, OTHER_SCOPE = "T-writer", "T-someone-else"
CLIENT = "dedup-client"
SERVER = "s1"
CONTENTS = [b"alpha" * 3, b"beta" * 4, b"gamma"]  # few, so the same content comes back often
NAMES = [b"f%d" % i for i in range(3)]
INDEXES = st.integers(0, 2)


class DedupModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        self.t = Tables(self.dir / "meta")
        self.snapshots = Snapshots(self.t.namespace, self.t.chunks)
        self.store: dict[tuple[int, int], bytes] = {}  # the chunkserver: (chunk id, version) -> bytes
        self.files: dict[tuple[int, bytes], dict[int, bytes]] = {}  # (directory, name) -> chunk index -> bytes
        self.pending: list[tuple[r.DedupHit, bytes]] = []  # dedup answers not committed yet, with their content
        self.dirs: dict[str, int] = {}
        self.probe = 0  # an empty file no rule writes: commits that must be refused are tried on it

    @initialize()
    def directories(self) -> None:
        with self.t.db.env.begin(write=True) as txn:
            for name, trash_s in (("keep", 3600), ("drop", 0)):
                attr = self.t.namespace.create(txn, r.CreateReq(parent=1, name=name.encode(), mode=stat.S_IFDIR | 0o755,
                                                                uid=0, gid=0))
                self.t.namespace.set_trash_time(txn, r.TrashTimeReq(attr.ino, trash_s))
                self.dirs[name] = attr.ino
            self.probe = self.t.namespace.create(txn, r.CreateReq(parent=1, name=b"probe", mode=stat.S_IFREG | 0o644,
                                                                  uid=0, gid=0)).ino

    def teardown(self) -> None:
        self.t.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- helpers -----------------------------------------------------------------------------
    def _ino(self, txn, key: tuple[int, bytes]) -> int:
        return self.t.namespace.lookup(txn, key[0], key[1]).ino

    def _size(self, chunks: dict[int, bytes]) -> int:
        return max((i * CHUNK_SIZE + len(data) for i, data in chunks.items()), default=0)

    def _commit(self, txn, key: tuple[int, bytes], ref: r.ChunkRef, data: bytes) -> None:
        chunks = dict(self.files[key])
        chunks[ref.index] = data
        self.t.chunks.commit(txn, r.CommitReq(ino=self._ino(txn, key), size=self._size(chunks), mtime_ns=1,
                                              chunks=[ref]), CLIENT, SCOPE)
        self.files[key] = chunks

    def _upload(self, txn, index: int, data: bytes, content: str = "", proof: str = "") -> r.ChunkRef:
        version, chunk_id = self.t.chunks.reserve(txn, CLIENT, 1)
        self.store[(chunk_id, version)] = data
        return r.ChunkRef(index=index, chunk_id=chunk_id, version=version, length=len(data), checksum="x" + data.hex(),
                          replicas=[SERVER], content=content, proof=proof)

    def _shared_ref(self, hit: r.DedupHit, index: int, data: bytes) -> r.ChunkRef:
        content, proof = name_and_proof(data)
        return r.ChunkRef(index=index, chunk_id=hit.chunk_id, version=hit.version, length=hit.length,
                          checksum=hit.checksum, replicas=hit.replicas, content=content, proof=proof, shared=True)

    # ---- rules -------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), where=st.sampled_from(["keep", "drop"]))
    def create(self, name: bytes, where: str) -> None:
        key = (self.dirs[where], name)
        if key in self.files:
            return
        with self.t.db.env.begin(write=True) as txn:
            self.t.namespace.create(txn, r.CreateReq(parent=key[0], name=name, mode=stat.S_IFREG | 0o644, uid=0, gid=0))
        self.files[key] = {}

    @precondition(lambda self: self.files)
    @rule(data=st.data(), index=INDEXES, content=st.sampled_from(CONTENTS), dedup=st.booleans())
    def write(self, data, index: int, content: bytes, dedup: bool) -> None:
        """A writer's chunk: with dedup, asked for first (committed shared if stored), else uploaded."""
        key = data.draw(st.sampled_from(sorted(self.files)))
        name, proof = name_and_proof(content)
        with self.t.db.env.begin(write=True) as txn:
            hit = self.t.chunks.find_content(txn, r.DedupReq(name, proof), SCOPE) if dedup else None
            if hit is not None:
                assert self.store[(hit.chunk_id, hit.version)] == content
                ref = self._shared_ref(hit, index, content)
            else:
                ref = self._upload(txn, index, content, *((name, proof) if dedup else ()))
            self._commit(txn, key, ref, content)

    @rule(content=st.sampled_from(CONTENTS))
    def ask(self, content: bytes) -> None:
        """A writer asks now and commits later (`commit_asked`): other changes come between."""
        with self.t.db.env.begin(write=True) as txn:
            hit = self.t.chunks.find_content(txn, r.DedupReq(*name_and_proof(content)), SCOPE)
        if hit is not None:
            self.pending.append((hit, content))

    @precondition(lambda self: self.pending and self.files)
    @rule(data=st.data(), index=INDEXES)
    def commit_asked(self, data, index: int) -> None:
        hit, content = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        key = data.draw(st.sampled_from(sorted(self.files)))
        with self.t.db.env.begin(write=True) as txn:
            self._commit(txn, key, self._shared_ref(hit, index, content), content)

    @rule(content=st.sampled_from(CONTENTS))
    def content_is_not_found_without_its_proof_or_by_another_credential(self, content: bytes) -> None:
        name, proof = name_and_proof(content)
        wrong = name_and_proof(content + b"!")[1]
        with self.t.db.env.begin(write=True) as txn:
            assert self.t.chunks.find_content(txn, r.DedupReq(name, wrong), SCOPE) is None
            assert self.t.chunks.find_content(txn, r.DedupReq(name, proof), OTHER_SCOPE) is None

    def _refused(self, ref: r.ChunkRef, scope: str) -> None:
        """Committing `ref` is refused with EPERM (and changes nothing)."""
        with pytest.raises(FsError) as refused, self.t.db.env.begin(write=True) as txn:
            self.t.chunks.commit(txn, r.CommitReq(ino=self.probe, size=ref.length, mtime_ns=1, chunks=[ref]),
                                 CLIENT, scope)
        assert refused.value.errno == errno.EPERM

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def a_version_merely_named_is_not_attached(self, data) -> None:
        """A shared ref for a version no dedup call handed this credential: EPERM, nothing changes."""
        with self.t.db.env.begin(write=True) as txn:
            held = [rec for ino_key in self.files for _i, rec in self.t.chunks.records(txn, self._ino(txn, ino_key))]
        if not held:
            return
        rec = data.draw(st.sampled_from(held))
        self._refused(r.ChunkRef(index=0, chunk_id=rec.chunk_id, version=rec.version, length=rec.length,
                                 checksum=rec.checksum, replicas=rec.replicas, shared=True), OTHER_SCOPE)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), index=INDEXES, length=st.integers(0, 6))
    def truncate(self, data, index: int, length: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.files)))
        size = index * CHUNK_SIZE + length
        with self.t.db.env.begin(write=True) as txn:
            self.t.namespace.setattr(txn, r.SetattrReq(ino=self._ino(txn, key), size=size), self.t.chunks.truncate)
        chunks = {}
        for i, piece in self.files[key].items():
            if i * CHUNK_SIZE < size:
                chunks[i] = piece[: size - i * CHUNK_SIZE]
        self.files[key] = chunks

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def unlink(self, data) -> None:
        key = data.draw(st.sampled_from(sorted(self.files)))
        with self.t.db.env.begin(write=True) as txn:
            self.t.namespace.remove(txn, r.RemoveReq(key[0], key[1], False))
        del self.files[key]

    @precondition(lambda self: self.files)
    @rule(data=st.data(), name=st.sampled_from(NAMES), where=st.sampled_from(["keep", "drop"]))
    def snapshot(self, data, name: bytes, where: str) -> None:
        source = data.draw(st.sampled_from(sorted(self.files)))
        key = (self.dirs[where], name)
        if key in self.files:
            return
        with self.t.db.env.begin(write=True) as txn:
            self.snapshots.snapshot(txn, r.SnapshotReq(self._ino(txn, source), key[0], name))
        self.files[key] = dict(self.files[source])

    @rule()
    def trash_expires(self) -> None:
        with self.t.db.env.begin(write=True) as txn:
            while self.t.namespace.trash.purge(txn, r.TrashPurgeReq(everything=True)):
                pass

    @rule()
    def pins_run_out(self) -> None:
        """Writers that asked more than the pin time ago may commit no more (EPERM, as for an
        upload whose reservation ended); what only their pins kept is queued for deletion."""
        with self.t.db.env.begin(write=True) as txn:
            self.t.chunks.end_pins(txn, time.time() + 2 * self.t.chunks.contents.pin_s)
        for hit, content in self.pending:
            self._refused(self._shared_ref(hit, 0, content), SCOPE)
        self.pending.clear()

    @rule()
    def deleter(self) -> None:
        """The deleter: every queued version deleted on the chunkserver."""
        with self.t.db.env.begin(write=True) as txn:
            for chunk_id, version, servers in self.t.chunks.pending_deletions(txn, 10_000):
                self.store.pop((chunk_id, version), None)
                for server in servers:
                    self.t.chunks.deletion_done(txn, chunk_id, version, server)

    @rule()
    def gc(self) -> None:
        """`chunkfs gc` (and a chunkserver's registration): what no record holds and no writer
        may still commit is garbage."""
        with self.t.db.env.begin(write=True) as txn:
            for version in self.t.chunks.unreferenced(txn, list(self.store)):
                self.store.pop(version)

    # ---- what holds after every step ---------------------------------------------------------
    @invariant()
    def files_read_back_and_tables_agree(self) -> None:
        if not self.dirs:
            return
        with self.t.db.read() as txn:
            for key, chunks in self.files.items():
                ino = self._ino(txn, key)
                records = dict(self.t.chunks.records(txn, ino))
                assert sorted(records) == sorted(chunks)
                for index, rec in records.items():
                    stored = self.store.get((rec.chunk_id, rec.version))
                    assert stored is not None, f"chunk {index} of {key}: its version was deleted while held"
                    assert stored[: rec.length] == chunks[index]
            for hit, _content in self.pending:
                assert (hit.chunk_id, hit.version) in self.store, "a version handed to a writer was deleted"
            assert self.t.chunks.sharing_problems(txn) == []
            assert self.t.namespace.counts.read(txn) == self.t.chunks.recount_all(txn)

    def check_nothing_left_over(self) -> None:
        """Once pins ran out and the deleter and gc ran: the chunkserver holds exactly what records hold."""
        self.pins_run_out()
        self.deleter()
        self.gc()
        with self.t.db.read() as txn:
            held = {(rec.chunk_id, rec.version) for raw in txn.cursor(db=self.t.db.chunks).iternext(keys=False)
                    for rec in (msgspec.msgpack.decode(raw, type=ChunkRecord),)}
        assert set(self.store) == held


class DedupModelChecked(DedupModel):
    def teardown(self) -> None:
        try:
            if self.dirs:
                self.check_nothing_left_over()
        finally:
            super().teardown()


DedupModelChecked.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
test_dedup_reference_counts_against_a_model = DedupModelChecked.TestCase


def test_a_version_handed_to_a_writer_outlives_its_last_file_until_the_commit():
    """The race the pins are for, step by step: a writer is told content is stored, the only
    file holding it goes (no trash) and the deleter runs, then the writer commits: the version
    is still there and the file reads back; then everything goes and nothing is left over."""
    model = DedupModelChecked()
    try:
        model.directories()
        drop = model.dirs["drop"]
        model.create(b"f0", "drop")
        model.write(_Draw([(drop, b"f0")]), 0, CONTENTS[0], True)
        model.ask(CONTENTS[0])
        assert model.pending
        model.unlink(_Draw([(drop, b"f0")]))
        model.deleter()
        model.gc()
        model.files_read_back_and_tables_agree()  # the version asked for is still stored
        model.create(b"f1", "drop")
        model.commit_asked(_Draw([0, (drop, b"f1")]), 1)
        model.files_read_back_and_tables_agree()
        model.unlink(_Draw([(drop, b"f1")]))
        model.deleter()
        assert not model.store  # its pin ended with the commit: freed with its last file
    finally:
        model.teardown()


class _Draw:
    """Stands for hypothesis's `data` in a rule called by hand: hands out the given values in turn."""

    def __init__(self, values: list) -> None:
        self.values = list(values)

    def draw(self, _strategy):
        return self.values.pop(0)
