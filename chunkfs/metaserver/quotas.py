"""Directory quotas: limits on the logical bytes and the inodes below a directory, and the usage
they are checked against, kept exact in the transaction of every change that moves it.

What a quota counts: every inode below its directory (not the directory itself) once, and the
sizes of the regular files among them (logical bytes: a sparse file counts its size).

Who is charged where: every inode is charged to one directory, its *anchor* (`Inode.parent`),
and so to every quota on the anchor's path to the root. A directory's anchor is its parent. A
file's is the directory it was created in or renamed into by the name living there; a file
with several names (hard links) stays charged there while that name lives, and when that name
goes and others remain it is charged nowhere (anchor 0), as with JuiceFS, whose directory
quotas do not follow hard links either. A file with no name left (unlinked while open) and the
files of a database older than quotas (anchor 0) are charged nowhere.

Promises:
- `changed` runs inside `Namespace.put`/`_free`, so every path that changes an inode row moves
  the usage in the same LMDB transaction: a crash never leaves usage and the tree apart.
- A change that adds bytes or inodes to a quota past its hard limit fails with EDQUOT (and, as
  every failed mutation, changes nothing). A change that takes away never fails, so a quota set
  below its usage refuses further growth but lets the user clean up.
- Soft limits are never enforced: `chunkfs quota get` and the status page warn past them.
- `check` recounts every quota from the tree, for `chunkfs fsck`.

Costs: with no quota set, one `stat` of the quota table per charge change. With quotas, a walk
of the anchor's parents (its depth) per change of size or inode count; moving a directory
between different sets of quotas counts its subtree (all of it, unless it has a quota itself).
"""

from __future__ import annotations

import errno
import stat
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from chunkfs import ROOT_INODE
from chunkfs.errors import FsError
from chunkfs.metaserver.db import Txn, read_u64, u64
from chunkfs.protocol import records as r

if TYPE_CHECKING:  # namespace.py imports this module
    from chunkfs.metaserver.namespace import Inode, Namespace

MAX_DEPTH = 4096


class QuotaRecord(Struct, array_like=True):
    """One quota's limits (0: none) and the usage below its directory."""

    bytes_hard: int = 0
    bytes_soft: int = 0
    inodes_hard: int = 0
    inodes_soft: int = 0
    used_bytes: int = 0
    used_inodes: int = 0


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(QuotaRecord)

Charge = tuple[int, int, int]  # (anchor directory, bytes, inodes)


def charge_of(ino: int, inode: Inode | None) -> Charge | None:
    """What an inode row adds to the quotas above its anchor (None: nothing)."""
    if inode is None or ino == ROOT_INODE or inode.nlink == 0 or inode.parent == 0:
        return None
    return inode.parent, inode.size if stat.S_ISREG(inode.mode) else 0, 1


class DirectoryQuotas:
    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.db = namespace.db

    # ---- reading ------------------------------------------------------------------------------
    def any(self, txn: Txn) -> bool:
        return bool(txn.stat(self.db.quotas)["entries"])

    def record(self, txn: Txn, ino: int) -> QuotaRecord | None:
        raw = txn.get(u64(ino), db=self.db.quotas)
        return None if raw is None else _dec.decode(raw)

    def above(self, txn: Txn, anchor: int) -> list[int]:
        """The directories with a quota from `anchor` up to the root (both included)."""
        found: list[int] = []
        ino = anchor
        for _ in range(MAX_DEPTH):
            if txn.get(u64(ino), db=self.db.quotas) is not None:
                found.append(ino)
            if ino == ROOT_INODE:
                return found
            raw = txn.get(u64(ino), db=self.db.inodes)
            if raw is None:  # a directory being freed in this very transaction
                return found
            ino = self.namespace.decode(raw).parent
        raise FsError(errno.ELOOP, "directory tree too deep")

    def covers(self, txn: Txn, directory: int) -> bool:
        """Whether anything made in `directory` is charged to some quota."""
        return self.any(txn) and bool(self.above(txn, directory))

    def info(self, txn: Txn, ino: int, rec: QuotaRecord) -> r.QuotaInfo:
        return r.QuotaInfo(ino=ino, path=self.namespace.path_of_dir(txn, ino), bytes_hard=rec.bytes_hard,
                           bytes_soft=rec.bytes_soft, inodes_hard=rec.inodes_hard, inodes_soft=rec.inodes_soft,
                           used_bytes=rec.used_bytes, used_inodes=rec.used_inodes)

    def get(self, txn: Txn, ino: int) -> r.QuotaInfo:
        self.namespace.get(txn, ino)
        rec = self.record(txn, ino)
        if rec is None:
            raise FsError(errno.ENODATA, f"directory {ino} has no quota")
        return self.info(txn, ino, rec)

    def listing(self, txn: Txn, over_soft_only: bool = False, under: int = ROOT_INODE) -> list[r.QuotaInfo]:
        """Every quota on directory `under` or below it (or those past a soft limit: the status
        page's, O(quotas), no cursor at all while there is none)."""
        out: list[r.QuotaInfo] = []
        if not self.any(txn):
            return out
        for key, raw in txn.cursor(db=self.db.quotas):
            rec, ino = _dec.decode(raw), read_u64(key)
            if (not over_soft_only or over_soft(rec)) and (under == ROOT_INODE or self.namespace.inside(txn, under, ino)):
                out.append(self.info(txn, ino, rec))
        return out

    def subtree_usage(self, txn: Txn, directory: int) -> tuple[int, int]:
        """(bytes, inodes) charged below `directory`: its quota's usage if it has one, else a
        count over its subtree."""
        rec = self.record(txn, directory)
        if rec is not None:
            return rec.used_bytes, rec.used_inodes
        return self.count(txn, directory)

    def count(self, txn: Txn, directory: int) -> tuple[int, int]:
        """(bytes, inodes) charged below `directory`, counted from the tree."""
        used_bytes = used_inodes = 0
        todo = [directory]
        while todo:
            parent = todo.pop()
            charged: set[int] = set()
            for _name, child in self.namespace.entries(txn, parent, None):
                inode = self.namespace.get(txn, child)
                if stat.S_ISDIR(inode.mode):
                    todo.append(child)
                elif inode.parent != parent or child in charged or inode.nlink == 0:
                    continue
                charged.add(child)
                used_inodes += 1
                used_bytes += inode.size if stat.S_ISREG(inode.mode) else 0
        return used_bytes, used_inodes

    def check(self, txn: Txn) -> list[r.QuotaCheck]:
        """Every quota whose usage differs from a recount of its subtree (`chunkfs fsck`)."""
        wrong = []
        for key, raw in txn.cursor(db=self.db.quotas):
            ino, rec = read_u64(key), _dec.decode(raw)
            counted_bytes, counted_inodes = self.count(txn, ino)
            if (counted_bytes, counted_inodes) != (rec.used_bytes, rec.used_inodes):
                wrong.append(r.QuotaCheck(ino=ino, path=self.namespace.path_of_dir(txn, ino),
                                          recorded_bytes=rec.used_bytes, recorded_inodes=rec.used_inodes,
                                          counted_bytes=counted_bytes, counted_inodes=counted_inodes))
        return wrong

    # ---- changing -----------------------------------------------------------------------------
    def set(self, txn: Txn, req: r.QuotaSetReq) -> r.QuotaInfo:
        """Set (or replace) the limits of directory `req.ino`; its usage is counted now. A limit
        below the usage is accepted: growth below it is refused from then on."""
        inode = self.namespace.get(txn, req.ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR, f"inode {req.ino} is not a directory: quotas are set on directories")
        if not (req.bytes_hard or req.bytes_soft or req.inodes_hard or req.inodes_soft):
            raise FsError(errno.EINVAL, "a quota needs a limit (use quota remove to drop one)")
        for what, soft, hard in (("bytes", req.bytes_soft, req.bytes_hard), ("inodes", req.inodes_soft, req.inodes_hard)):
            if soft and hard and soft > hard:
                raise FsError(errno.EINVAL, f"the soft limit on {what} ({soft}) is above the hard one ({hard})")
        old = self.record(txn, req.ino)
        used_bytes, used_inodes = (old.used_bytes, old.used_inodes) if old else self.count(txn, req.ino)
        rec = QuotaRecord(req.bytes_hard, req.bytes_soft, req.inodes_hard, req.inodes_soft, used_bytes, used_inodes)
        txn.put(u64(req.ino), _enc.encode(rec), db=self.db.quotas)
        return self.info(txn, req.ino, rec)

    def remove(self, txn: Txn, ino: int) -> None:
        self.namespace.get(txn, ino)
        if not txn.delete(u64(ino), db=self.db.quotas):
            raise FsError(errno.ENODATA, f"directory {ino} has no quota")

    def forget(self, txn: Txn, ino: int) -> None:
        """Directory `ino` is gone, its quota with it."""
        txn.delete(u64(ino), db=self.db.quotas)

    def changed(self, txn: Txn, ino: int, before: Inode | None, after: Inode | None) -> None:
        """Move the usage of the quotas above `ino` from its old row to its new one (either may
        be None: created, freed); EDQUOT if that adds past a hard limit."""
        old, new = charge_of(ino, before), charge_of(ino, after)
        if old == new or not self.any(txn):
            return
        old_quotas = self.above(txn, old[0]) if old else []
        new_quotas = self.above(txn, new[0]) if new else []
        if not old_quotas and not new_quotas:
            return
        below = (0, 0)
        moved_dir = old is not None and new is not None and old[0] != new[0] and after is not None \
            and stat.S_ISDIR(after.mode)
        if moved_dir and set(old_quotas) != set(new_quotas):
            below = self.subtree_usage(txn, ino)
        deltas: dict[int, list[int]] = {}
        for quotas, charge, sign in ((old_quotas, old, -1), (new_quotas, new, 1)):
            if charge is None:
                continue
            for quota in quotas:
                delta = deltas.setdefault(quota, [0, 0])
                delta[0] += sign * (charge[1] + below[0])
                delta[1] += sign * (charge[2] + below[1])
        for quota, (bytes_delta, inodes_delta) in deltas.items():
            if bytes_delta or inodes_delta:
                self._add(txn, quota, bytes_delta, inodes_delta)

    def _add(self, txn: Txn, quota: int, bytes_delta: int, inodes_delta: int) -> None:
        rec = self.record(txn, quota)
        assert rec is not None
        if bytes_delta > 0 and rec.bytes_hard and rec.used_bytes + bytes_delta > rec.bytes_hard:
            raise FsError(errno.EDQUOT, f"the quota of directory {quota} allows {rec.bytes_hard} bytes "
                                        f"({rec.used_bytes} used)")
        if inodes_delta > 0 and rec.inodes_hard and rec.used_inodes + inodes_delta > rec.inodes_hard:
            raise FsError(errno.EDQUOT, f"the quota of directory {quota} allows {rec.inodes_hard} inodes "
                                        f"({rec.used_inodes} used)")
        rec.used_bytes += bytes_delta
        rec.used_inodes += inodes_delta
        txn.put(u64(quota), _enc.encode(rec), db=self.db.quotas)

    def size_limit(self, txn: Txn, req: r.QuotaLimitReq) -> int:
        """The size file `req.ino` may grow to before a hard limit on bytes refuses its commit,
        as of now (-1: no limit): what a writer checks its writes against, so a program sees
        EDQUOT at the write that passes the quota rather than at close. A file whose create is
        still held by its client (not here yet) is taken as empty in `req.parent`."""
        if not self.any(txn):
            return -1
        raw = txn.get(u64(req.ino), db=self.db.inodes)
        if raw is None and not req.parent:
            raise FsError(errno.ENOENT, f"no inode {req.ino}")
        inode = self.namespace.decode(raw) if raw is not None else None
        charge = charge_of(req.ino, inode) if inode is not None else (req.parent, 0, 1)
        if charge is None:
            return -1
        rooms = [rec.bytes_hard - rec.used_bytes for quota in self.above(txn, charge[0])
                 if (rec := self.record(txn, quota)) is not None and rec.bytes_hard]
        return charge[1] + max(0, min(rooms)) if rooms else -1

    # ---- statfs ---------------------------------------------------------------------------------
    def statfs(self, txn: Txn, ino: int, cluster: r.Statfs) -> r.Statfs:
        """What `df` shows on a mount of directory `ino`: its quota as the size when it has a
        limit on bytes (the cluster's free space if that is less), else the cluster."""
        rec = self.record(txn, ino)
        if rec is None or not rec.bytes_hard:
            return cluster
        free = max(0, min(rec.bytes_hard - rec.used_bytes, cluster.free_bytes))
        return r.Statfs(total_bytes=rec.bytes_hard, free_bytes=free, files=rec.used_inodes, chunks=cluster.chunks)


def over_soft(rec: QuotaRecord) -> bool:
    return bool((rec.bytes_soft and rec.used_bytes > rec.bytes_soft)
                or (rec.inodes_soft and rec.used_inodes > rec.inodes_soft))
