"""Dedup: which stored chunk version holds which content, and the versions handed to writers
that found their content already stored.

A commit of an uploaded chunk carries its content name and proof (`chunkfs.content_hash`); the
chunk table indexes the version under (name, scope) here, in the commit's transaction. A writer
about to upload a chunk asks (`find`) with the name and the proof of its bytes; if a version
of its scope holds that content and the proof matches, it is answered that version and commits
it as a `shared` ChunkRef instead of uploading. The version then has one more record holding it:
the reference count is the chunk table's own (the version index and the `holders` rows a
snapshot uses too), so a version is deleted when its last record lets it go, whoever wrote it.

Promises:
- The index names only versions some record holds: an entry goes in the transaction in which
  the last record holding its version lets it go (`forget`); a later commit of the content
  indexes it again.
- A caller learns nothing of content it cannot prove it has: a wrong proof is answered like
  content not stored. The metaserver keeps a hash of each proof, never the proof.
- Scope: content is found only for the credential (token holder) whose files indexed it. Across
  credentials a client holding content X could store other bytes under X's name and proof and so
  corrupt the files of every later writer of X; the chunkservers would have to hash every upload
  to rule that out, which they do not.
- A version answered is kept (*pinned*) for its scope until the commit that uses the answer, or
  `pin_s` at most (the commit may come much later, at the file's close): if its last record lets
  it go meanwhile, it is not queued for deletion (`ChunkTable.release`) nor taken as garbage
  (`ChunkTable.unreferenced`) until the pin ends; a pin whose time runs out on a version nothing
  holds queues it for deletion then (`ChunkTable.end_pins`). A pin counts its answers not
  committed yet (`uses`), so writers of one credential asking for the same content at once each
  get to commit it.
- A `shared` ref is committed only for a version pinned for the committer's scope, and its
  record gets the replicas, checksum and length the metaserver has, not what the client says.

Keys of the `dedup` table: b"c" + name (32 bytes) + scope -> Entry; b"v" + (chunk id, version)
-> the b"c" key naming it; b"p" + (chunk id, version) + scope -> Pin.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import time
from collections.abc import Callable

import msgspec
from msgspec import Struct

from chunkfs.content_hash import proof_check
from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Txn, U64x2
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)

PIN_S = 3600.0
SWEEP_S = 60.0
_CONTENT, _VERSION, _PIN = b"c", b"v", b"p"


class Entry(Struct, array_like=True):
    chunk_id: int
    version: int
    length: int  # of the content (a record holding the version may be shorter: truncated)
    checksum: str
    proof_check: bytes


class Pin(Struct, array_like=True):
    expires_at: float  # Unix time
    length: int  # of the content
    checksum: str
    replicas: list[str]  # the version's, as of its last record (it may have none now)
    uses: int = 1  # answers not committed yet: each commit of the version as `shared` takes one


_enc = msgspec.msgpack.Encoder()
_entry_dec = msgspec.msgpack.Decoder(Entry)
_pin_dec = msgspec.msgpack.Decoder(Pin)


def _content_key(name: str, scope: str) -> bytes:
    return _CONTENT + bytes.fromhex(name) + scope.encode()


class ContentIndex:
    def __init__(self, db: MetaDB, pin_s: float = PIN_S) -> None:
        self.db, self.pin_s = db, pin_s

    # ---- the index ---------------------------------------------------------------------------
    def index(self, txn: Txn, entry: Entry, content: str, scope: str) -> None:
        """A committed record holds `entry`'s version, whose content is named `content`: found
        from now on (unless another version of the scope is found for that content already)."""
        version_key = _VERSION + U64x2.pack(entry.chunk_id, entry.version)
        key = _content_key(content, scope)
        if txn.get(key, db=self.db.dedup) is not None or txn.get(version_key, db=self.db.dedup) is not None:
            return
        txn.put(key, _enc.encode(entry), db=self.db.dedup)
        txn.put(version_key, key, db=self.db.dedup)

    def forget(self, txn: Txn, chunk_id: int, version: int) -> None:
        """No record holds this version any more: it is found no more."""
        key = txn.pop(_VERSION + U64x2.pack(chunk_id, version), db=self.db.dedup)
        if key is not None:
            txn.delete(key, db=self.db.dedup)

    def match(self, txn: Txn, req: r.DedupReq, scope: str) -> Entry | None:
        """The entry of `scope` for `req.content` if `req.proof` is its proof (a read)."""
        raw = txn.get(_content_key(req.content, scope), db=self.db.dedup)
        if raw is None:
            return None
        entry = _entry_dec.decode(raw)
        return entry if hmac.compare_digest(entry.proof_check, proof_check(req.proof)) else None

    def find(self, txn: Txn, req: r.DedupReq, scope: str, replicas_of: Callable[[int, int], list[str]]
             ) -> r.DedupHit | None:
        """The version of `scope` holding `req.content`, pinned for the scope (one use more, its
        time from now: see above); None if there is none or the proof does not match (the caller
        cannot tell which)."""
        entry = self.match(txn, req, scope)
        if entry is None:
            return None
        replicas = replicas_of(entry.chunk_id, entry.version)
        if not replicas:  # every copy lost: better uploaded again
            return None
        key = _pin_key(entry.chunk_id, entry.version, scope)
        raw = txn.get(key, db=self.db.dedup)
        uses = _pin_dec.decode(raw).uses + 1 if raw is not None else 1
        txn.put(key, _enc.encode(Pin(time.time() + self.pin_s, entry.length, entry.checksum, replicas, uses)),
                db=self.db.dedup)
        return r.DedupHit(entry.chunk_id, entry.version, entry.length, entry.checksum, replicas, valid_s=self.pin_s)

    # ---- pins --------------------------------------------------------------------------------
    def pin_of(self, txn: Txn, chunk_id: int, version: int, scope: str) -> Pin | None:
        """The live pin of this version for `scope`, if any."""
        raw = txn.get(_pin_key(chunk_id, version, scope), db=self.db.dedup)
        pin = _pin_dec.decode(raw) if raw is not None else None
        return pin if pin is not None and pin.expires_at >= time.time() else None

    def _pins(self, txn: Txn, chunk_id: int, version: int) -> list[tuple[bytes, Pin]]:
        prefix = _PIN + U64x2.pack(chunk_id, version)
        cursor = txn.cursor(db=self.db.dedup)
        out = []
        if cursor.set_range(prefix):
            for key, raw in cursor:
                if not key.startswith(prefix):
                    break
                out.append((bytes(key), _pin_dec.decode(raw)))
        return out

    def attach(self, txn: Txn, ref: r.ChunkRef, scope: str) -> Pin:
        """The pin that lets `scope` commit the shared `ref`, one use of it taken (the last ends
        it): EPERM if there is none (never handed to this credential, or its time ran out),
        EINVAL for a length past the content's."""
        pin = self.pin_of(txn, ref.chunk_id, ref.version, scope)
        if pin is None:
            raise FsError(errno.EPERM, f"chunk {ref.chunk_id} v{ref.version} was not handed to this credential by "
                                       f"a dedup call (or that was more than {self.pin_s:.0f} s ago)")
        if ref.length > pin.length:
            raise FsError(errno.EINVAL, f"chunk {ref.chunk_id} v{ref.version} holds {pin.length} bytes, not {ref.length}")
        self.use(txn, ref, scope)
        return pin

    def use(self, txn: Txn, ref: r.ChunkRef, scope: str) -> None:
        """One answer about `ref`'s version is done with (committed): its pin ends with the last."""
        key = _pin_key(ref.chunk_id, ref.version, scope)
        raw = txn.get(key, db=self.db.dedup)
        if raw is None:
            return
        pin = _pin_dec.decode(raw)
        if pin.uses > 1:
            pin.uses -= 1
            txn.put(key, _enc.encode(pin), db=self.db.dedup)
        else:
            txn.delete(key, db=self.db.dedup)

    def pinned(self, txn: Txn, chunk_id: int, version: int) -> bool:
        """Whether a writer may still commit this version (kept until then, whatever holds it)."""
        return bool(self._pins(txn, chunk_id, version))

    def keep_for_pins(self, txn: Txn, chunk_id: int, version: int, replicas: list[str]) -> bool:
        """The last record let go of this version: True if pins keep it (they remember where it
        is, for their commit or their end), False if it may be deleted now."""
        pins = self._pins(txn, chunk_id, version)
        for key, pin in pins:
            pin.replicas = list(replicas)
            txn.put(key, _enc.encode(pin), db=self.db.dedup)
        return bool(pins)

    def ended_pins(self, txn: Txn, now: float) -> list[tuple[bytes, Pin]]:
        """Every pin whose time is up."""
        cursor = txn.cursor(db=self.db.dedup)
        out = []
        if cursor.set_range(_PIN):
            for key, raw in cursor:
                if not key.startswith(_PIN):
                    break
                pin = _pin_dec.decode(raw)
                if pin.expires_at < now:
                    out.append((bytes(key), pin))
        return out

    def unpin(self, txn: Txn, key: bytes) -> tuple[int, int] | None:
        """End the pin at `key`; the (chunk id, version) it was on, or None if it had gone."""
        if not txn.delete(key, db=self.db.dedup):
            return None
        chunk_id, version = U64x2.unpack(key[1:17])
        return chunk_id, version

    # ---- checks ------------------------------------------------------------------------------
    def problems(self, txn: Txn, referenced: Callable[[int, int], bool]) -> list[str]:
        """What is wrong in the index (`chunkfs fsck`): every entry names a version some record
        holds, and the entry and its version's back-reference agree."""
        problems = []
        cursor = txn.cursor(db=self.db.dedup)
        for key, raw in cursor:
            if key.startswith(_CONTENT):
                entry = _entry_dec.decode(raw)
                if not referenced(entry.chunk_id, entry.version):
                    problems.append(f"dedup: chunk {entry.chunk_id} v{entry.version} is indexed but no record holds it")
                back = txn.get(_VERSION + U64x2.pack(entry.chunk_id, entry.version), db=self.db.dedup)
                if back != key:
                    problems.append(f"dedup: chunk {entry.chunk_id} v{entry.version} has no back-reference")
            elif key.startswith(_VERSION) and txn.get(raw, db=self.db.dedup) is None:
                problems.append(f"dedup: chunk {U64x2.unpack(key[1:17])} names an index entry that is gone")
        return problems


def _pin_key(chunk_id: int, version: int, scope: str) -> bytes:
    return _PIN + U64x2.pack(chunk_id, version) + scope.encode()


async def end_pins_forever(committer: GroupCommitter, end_pins: Callable[[Txn, float], int]) -> None:
    """End pins whose time is up (`ChunkTable.end_pins`), every SWEEP_S, for the life of the metaserver."""
    while True:
        await asyncio.sleep(SWEEP_S)
        try:
            ended = await committer.run(end_pins, time.time())
            if ended:
                log.debug("ended %d dedup pins", ended)
        except Exception:
            log.exception("ending dedup pins failed; retrying later")
