"""`chunkfs fsck`, the disks: what every chunkserver holds, compared with the chunk table.

A page covers a few buckets of chunk ids (see `chunkfs.protocol.disk_check`): every live
chunkserver lists the versions it holds there (and those it found corrupt), the chunk table is
scanned once, and each recorded replica is

- *good*: its server holds it and has not found it corrupt;
- *missing*: its server is up and does not hold it (lost behind the metaserver's back);
- *corrupt*: its server holds it and found it failing its checksums;
- *unreachable*: its server is down or did not answer: its state is not known.

A version a server holds that no record lists there is *unknown* (files younger than
`min_age_s`, versions queued for deletion there, and versions a live reservation holds are not:
an upload its client may still commit, which gc keeps for the same reason, so that `--repair`
never deletes what a commit is about to name, and a check after gc is clean). A
chunk with no good replica is *lost* when none is unreachable, else *unavailable*.

The lists and the records are read at different instants, and writes go on meanwhile, so a
replica found missing or unknown is a candidate until confirmed: the servers are asked again and
the records read again, and only what still holds is reported (a replica recorded after the first
listing is held at the second; one deleted legitimately has left its record first). A corrupt copy
is a fact (chunk files are only replaced whole), reported even if it is gone by then: its server
reports it to the metaserver too, which has it deleted. With `repair`, that second reading is
the write transaction that queues the fixes, so nothing changed between them: missing and corrupt
replicas leave their records (re-replication makes new copies from good ones; the last replica of
a chunk is never dropped) and unknown ones are queued for deletion.

Memory per page is what the servers hold in its buckets plus the problems found (the details of at
most `MAX_DETAILS` replicas and files); the chunk table is read once per page, so a whole check is
a fixed number of scans, whatever the size of the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import msgspec

from chunkfs.errors import FsError, TransportError
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, U64x2
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicator import Replicator
from chunkfs.protocol import disk_check as d
from chunkfs.protocol.chunk_client import ChunkClient

log = logging.getLogger(__name__)

MAX_DETAILS = 1000  # replicas and files described per page (the counts are always whole)
INVENTORY_RETRY_S = 2.0

Version = d.Version
_record_dec = msgspec.msgpack.Decoder(ChunkRecord)


@dataclass
class Candidate:
    """A replica that looked wrong at the first reading."""

    chunk_id: int
    version: int
    server_id: str
    state: str  # missing, corrupt, unknown
    key: bytes | None  # its chunk record's key (None: an unknown version no record holds)


@dataclass
class ChunkSeen:
    """A recorded chunk of the page with some replica not good (at the first reading)."""

    key: bytes
    ino: int
    goal: int
    replicas: list[str]
    unreachable: int = 0
    suspects: list[Candidate] = field(default_factory=list)


@dataclass
class FirstReading:
    chunks_checked: int = 0
    chunks: list[ChunkSeen] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


class DiskCheck:
    def __init__(self, db: MetaDB, committer: GroupCommitter, chunks: ChunkTable, registry: Registry,
                 replicator: Replicator, deleter: Deleter, client: ChunkClient) -> None:
        self.db, self.committer, self.chunks, self.registry = db, committer, chunks, registry
        self.replicator, self.deleter, self.client = replicator, deleter, client

    async def run(self, req: d.DiskCheckReq) -> d.DiskCheckPage:
        buckets = range(req.first_bucket, min(d.BUCKETS, req.first_bucket + req.buckets))
        alive = self.registry.alive_ids()
        servers = sorted(self.registry.servers.values(), key=lambda s: s.address)
        page = d.DiskCheckPage(servers=[d.DiskServer(id=s.id, address=s.address, state="up" if s.id in alive else "down")
                                        for s in servers], next_bucket=buckets.stop)
        asked = [s for s in page.servers if s.state == "up"]
        held = await self._inventories(asked, buckets, req.min_age_s, req.verify)
        first = await asyncio.to_thread(self._first_reading, buckets, held, req.min_age_s)
        page.chunks_checked = first.chunks_checked
        suspected = {c.server_id for c in first.candidates if c.state != "corrupt"}
        again = await self._inventories([s for s in asked if s.id in suspected], buckets, 0.0, False)
        if req.repair:
            await self.committer.run(self._settle, page, first, again, True)
            if page.repaired:
                self.replicator.wake.set()
                self.deleter.wake.set()
        else:
            await asyncio.to_thread(self._settle_read_only, page, first, again)
        if page.files:
            await asyncio.to_thread(self._name_files, page.files)
        return page

    async def _inventories(self, servers: list[d.DiskServer], buckets: range, min_age_s: float,
                           verify: bool) -> dict[str, d.Inventory]:
        """The servers' answers; a server that cannot answer gets the reason as its state."""
        async def ask(server: d.DiskServer) -> d.Inventory | None:
            try:
                return await self.client.inventory_of_buckets(server.address, buckets, min_age_s, verify,
                                                              retry_s=INVENTORY_RETRY_S)
            except (FsError, TransportError, ValueError) as exc:  # ValueError: an address that is none
                log.warning("fsck: cannot list the chunks of %s: %s", server.address, exc)
                server.state = str(exc)
                return None
        answers = await asyncio.gather(*(ask(s) for s in servers))
        for server, answer in zip(servers, answers, strict=True):
            if answer is not None:
                server.held = len(answer.old) + len(answer.recent)
        return {s.id: a for s, a in zip(servers, answers, strict=True) if a is not None}

    # ---- the first reading: compare ----------------------------------------------------------
    def _first_reading(self, buckets: range, held: dict[str, d.Inventory], min_age_s: float) -> FirstReading:
        sets = {sid: (set(inv.old) | set(inv.recent), set(inv.corrupt)) for sid, inv in held.items()}
        unlisted = {sid: set(inv.old) for sid, inv in held.items()}  # old versions no record lists there yet
        reading = FirstReading()
        goals: dict[int, int] = {}
        with self.db.read() as txn:
            for key, raw in txn.cursor(db=self.db.chunks):
                rec = _record_dec.decode(raw)
                if d.bucket_of(rec.chunk_id) not in buckets:
                    continue
                reading.chunks_checked += 1
                version = (rec.chunk_id, rec.version)
                seen = None
                for sid in rec.replicas:
                    state = self._replica_state(version, sid, sets)
                    unlisted.get(sid, set()).discard(version)
                    if state == "good":
                        continue
                    ino = U64x2.unpack(key)[0]
                    if seen is None:
                        seen = ChunkSeen(key, ino, self._goal(txn, ino, goals), list(rec.replicas))
                    if state == "unreachable":
                        seen.unreachable += 1
                    else:
                        seen.suspects.append(Candidate(rec.chunk_id, rec.version, sid, state, key))
                for sid in self._corrupt_elsewhere(version, rec.replicas, sets):
                    # reported already and taken out of the record; its copy not deleted yet
                    ino = U64x2.unpack(key)[0]
                    if seen is None:
                        seen = ChunkSeen(key, ino, self._goal(txn, ino, goals), list(rec.replicas))
                    reading.candidates.append(Candidate(rec.chunk_id, rec.version, sid, "corrupt", key))
                if seen is None:
                    ino = U64x2.unpack(key)[0]
                    if len(rec.replicas) < self._goal(txn, ino, goals):  # short in the records already
                        seen = ChunkSeen(key, ino, goals[ino], list(rec.replicas))
                if seen is not None:
                    reading.chunks.append(seen)
                    reading.candidates.extend(seen.suspects)
            if not self.chunks.holding_back():  # after a restore unknown versions are kept on purpose
                for sid, versions in unlisted.items():
                    reading.candidates.extend(Candidate(cid, ver, sid, "unknown", None) for cid, ver in sorted(versions))
        return reading

    @staticmethod
    def _replica_state(version: Version, server_id: str, sets: dict[str, tuple[set[Version], set[Version]]]) -> str:
        if server_id not in sets:
            return "unreachable"
        held, corrupt = sets[server_id]
        if version in corrupt:
            return "corrupt"
        return "good" if version in held else "missing"

    @staticmethod
    def _corrupt_elsewhere(version: Version, replicas: list[str],
                           sets: dict[str, tuple[set[Version], set[Version]]]) -> list[str]:
        """Servers holding a corrupt copy of `version` that its record does not list."""
        return [sid for sid, (_held, corrupt) in sets.items() if version in corrupt and sid not in replicas]

    def _goal(self, txn: Txn, ino: int, goals: dict[int, int]) -> int:
        if ino not in goals:
            try:
                goals[ino] = self.chunks.namespace.get(txn, ino).goal or self.chunks.namespace.default_goal
            except FsError:
                goals[ino] = 0  # removed while we scan: nothing is wanted of it
        return goals[ino]

    # ---- the second reading: confirm, and repair -------------------------------------------------
    def _settle_read_only(self, page: d.DiskCheckPage, first: FirstReading, again: dict[str, d.Inventory]) -> None:
        with self.db.read() as txn:
            self._settle(txn, page, first, again, False)

    def _settle(self, txn: Txn, page: d.DiskCheckPage, first: FirstReading,
                again: dict[str, d.Inventory], repair: bool) -> None:
        """Keep the candidates that still hold, count them into `page` with the files they leave
        short, and (with `repair`) queue their fixes in `txn`."""
        confirmed: set[tuple[Version, str]] = set()
        reserved = self.chunks.owners.ranges(txn)
        for c in first.candidates:
            if self._still_holds(txn, c, again, reserved):
                confirmed.add(((c.chunk_id, c.version), c.server_id))
                self._count(page, c)
                if repair:
                    page.repaired += self._repair(txn, c)
        files: dict[int, d.DiskFile] = {}
        for chunk in first.chunks:
            page.unreachable += chunk.unreachable
            bad = sum(1 for c in chunk.suspects if ((c.chunk_id, c.version), c.server_id) in confirmed)
            good = len(chunk.replicas) - chunk.unreachable - bad
            if good >= chunk.goal or chunk.goal == 0:
                continue
            f = files.get(chunk.ino)
            if f is None:
                f = files[chunk.ino] = d.DiskFile(ino=chunk.ino, path=b"", goal=chunk.goal)
            if good > 0:
                f.chunks_under_goal += 1
            elif chunk.unreachable:
                f.chunks_unavailable += 1
            else:
                f.chunks_lost += 1
        # the lost and unavailable first, so a cap on details never hides them
        ranked = sorted(files.values(), key=lambda f: (-f.chunks_lost, -f.chunks_unavailable, f.ino))
        page.files = ranked[:MAX_DETAILS]

    def _still_holds(self, txn: Txn, c: Candidate, again: dict[str, d.Inventory],
                     reserved: list[tuple[int, int]]) -> bool:
        """Whether a candidate is confirmed at the second reading (`reserved`: the versions live
        reservations hold, `VersionReservations.ranges`)."""
        if c.state == "corrupt":
            # a fact, not a race: chunk files are only ever replaced whole. Its copy may be gone by
            # now: the server reported it and the metaserver had it deleted
            return True
        inventory = again.get(c.server_id)
        if inventory is None:
            return False  # did not answer the second time: nothing is known of it
        version = (c.chunk_id, c.version)
        held = version in inventory.old or version in inventory.recent
        rec = self._record(txn, c.key, version)
        if c.state == "unknown":
            if self.chunks.owners.holds(reserved, c.version):
                return False  # an upload that may still be committed (gc keeps it too)
            pending = self.replicator.edits.pending_deletion(txn, c.chunk_id, c.version)
            listed = rec is not None and c.server_id in rec.replicas
            return held and not listed and c.server_id not in pending
        return rec is not None and c.server_id in rec.replicas and not held

    def _record(self, txn: Txn, key: bytes | None, version: Version) -> ChunkRecord | None:
        """The record at `key` if it still holds `version`; for an unknown version (no key), any
        record of it found in its file's chunks is not looked for: none held it a moment ago, and a
        commit of it now cancels a queued deletion (`ChunkTable.cancel_deletion`)."""
        raw = txn.get(key, db=self.db.chunks) if key is not None else None
        rec = _record_dec.decode(raw) if raw else None
        return rec if rec is not None and (rec.chunk_id, rec.version) == version else None

    @staticmethod
    def _count(page: d.DiskCheckPage, c: Candidate) -> None:
        setattr(page, c.state, getattr(page, c.state) + 1)
        if len(page.replicas) < MAX_DETAILS:
            ino, index = U64x2.unpack(c.key) if c.key is not None else (0, 0)
            page.replicas.append(d.DiskReplica(chunk_id=c.chunk_id, version=c.version, server_id=c.server_id,
                                               state=c.state, ino=ino, index=index))

    def _repair(self, txn: Txn, c: Candidate) -> int:
        """Queue the fix of one confirmed replica; returns 1 if one was queued."""
        version = (c.chunk_id, c.version)
        if c.state == "unknown":
            self.chunks.queue_deletion(txn, c.chunk_id, c.version, [c.server_id])
            return 1
        assert c.key is not None
        edits = self.replicator.edits
        rec = self._record(txn, c.key, version)
        if rec is None or c.server_id not in rec.replicas:
            return 0  # out of its record already (a corrupt copy reported): its deletion is queued
        if c.state == "corrupt":
            result = edits.drop_corrupt(txn, c.server_id, [version], {version: c.key})
            self.replicator.corrupt_reports.setdefault(version, set()).add(c.server_id)
        else:
            result = edits.drop_server(txn, c.server_id, {version: c.key}, queue_deletion=False)
        return len(result.dropped)

    # ---- names -------------------------------------------------------------------------------------
    def _name_files(self, files: list[d.DiskFile]) -> None:
        """One path of each file, found by one scan of the directory entries (a file's `parent`
        is its quota anchor, which a hard-linked file may lack; directories know theirs)."""
        wanted = {f.ino: f for f in files}
        with self.db.read() as txn:
            for key, value in txn.cursor(db=self.db.dentries):
                f = wanted.get(int.from_bytes(value, "big"))
                if f is not None and not f.path:
                    parent = int.from_bytes(key[:8], "big")
                    f.path = b"/".join([*self.chunks.namespace.dir_names(txn, parent), key[8:]])

