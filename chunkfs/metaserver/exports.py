"""Exports: what a client's (or gateway's) credential may reach, enforced by the metaserver on
every filesystem call, so hand-made requests get no more than the export allows (the kernel's
`default_permissions` on an honest mount is no boundary). As an exports file's line:

- `subtree`: every inode a call names (locks too) must be inside it. A directory is inside when its chain
  of parents reaches the subtree's directory, judged at every call (so one moved out by another
  client is outside from then on); a file (whose links may be anywhere) when this credential
  was shown it inside: in an answer to a lookup, readdir, create or link made inside, or a
  `resolve` of a path below the subtree (the mount's start), until a rename moves it out of the
  subtree. So a file's inode number learnt elsewhere, or guessed, is refused (EACCES), and so is
  the parent of the subtree's root (`..` above the export). A `statfs` of an inode outside is
  answered for the subtree's root (its quota's figures, or the cluster's), not refused: tools ask
  it of the root; a lock listing shows the locks on files inside only.
- The change feed (`visible_changes`): a client is told only of what it could see. A change's
  inodes are kept when inside (as above), its entries when their directory is inside, at the time
  of the poll; so a rename out of the subtree reaches it as an unlink of the old name, a rename
  in as a create of the new one, and a change wholly outside is not sent at all (its sequence
  number still counts: the feed's numbers are the cluster's).
- `read_only`: every change is EROFS (creates, writes' reservations and commits, setattr,
  xattrs, renames, removes, goals). File locks are as on a read-only mount: read locks and
  flock locks (shared or exclusive: flock does not look at the open mode) are granted, a POSIX
  write lock is EBADF, as Linux answers F_SETLK for a descriptor not open for writing (on a
  read-only filesystem none can be); NFSv4 answers it so too.
- `maproot`: root squash. What such a client creates as uid or gid 0 is owned by `maproot`
  instead (a snapshot's copies of root's files too), and it cannot chown or chgrp anything to 0
  (EPERM).

A reclaim of locks after a metaserver restart (`lock_reclaim.py`) is checked lock by lock as
a `lock` would be; one refused is not given back (it is lost). The files this credential was
shown went with the restart, so for a reclaim those not shown since are looked for below the
subtree (a walk of at most MAX_WALK entries, once), and remembered as shown when found there.

What is not covered (yet): the seen files of a credential are kept in memory only (after a
metaserver restart a client looks its files up again; until its kernel does, a call on an inode
it cached is EACCES, but for the files it reclaims locks on); a file seen inside keeps being seen
when a hard link to it is made outside and its inside links are removed (only a rename out
ends it); the feed's sequence numbers count every change of the cluster (a client can tell that
something changed somewhere, not what or where).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Collection
from typing import Any

import msgspec

from chunkfs import ROOT_INODE
from chunkfs.credentials import Export
from chunkfs.errors import FsError
from chunkfs.metaserver.db import MetaDB, Txn
from chunkfs.metaserver.namespace import Namespace
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import named_inodes

CHANGES = frozenset({"create", "link", "remove", "rename", "setattr", "setxattr", "removexattr", "commit", "concat",
                     "goal", "reserve", "dedup", "reserve_inodes", "release_orphan", "snapshot", "trash_time",
                     "dedup_setting", "read_only"})
WHOLE_CLUSTER = frozenset({"release_leases", "reserve", "dedup", "reserve_inodes", "cancel_lock"})
MAX_DEPTH = 4096
MAX_WALK = 200_000  # directory entries a reclaim's look for unseen files reads at most


class ExportGuard:
    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self._seen: dict[str, set[int]] = {}  # key id -> files shown to it inside its subtree
        self._subtrees: dict[str, str] = {}  # key id -> its export's subtree (of those in _seen)

    def admit(self, txn: Txn, key_id: str, export: Export, op: str, req: Any,
              also_seen: Collection[int] = ()) -> Any:
        """`req` as the export lets it through (root squashed), or FsError (EROFS, EPERM, EACCES;
        EBADF for a POSIX write lock of a read-only export, inside it). `also_seen`: files
        counted as shown to this credential besides those it was (the files the mutations
        before `req` in a batch made, in the batch's transaction `txn`)."""
        if export.read_only and op in CHANGES:
            raise FsError(errno.EROFS, "this credential's export is read-only")
        if op == "goal" and not export.min_goal <= req.goal <= export.max_goal:
            raise FsError(errno.EPERM, f"this credential's export sets goals {export.min_goal}-{export.max_goal} only")
        if export.maproot >= 0:
            req = self._squashed(op, req, export.maproot)
        if export.subtree != "/" and op == "statfs":
            return self._statfs_inside(txn, key_id, export, req)
        if export.subtree != "/" and op not in WHOLE_CLUSTER:
            self._check_inside(txn, key_id, export, op, req, also_seen)
        if export.read_only and op == "lock" and req.type == r.F_WRLCK and not req.flock:
            raise FsError(errno.EBADF, "this credential's export is read-only: no descriptor is open for writing, "
                                       "so no POSIX write lock (read locks and flock are granted)")
        return req

    def shown(self, key_id: str, export: Export, answer: Any) -> None:
        """Remember the files an answer showed this credential (its request was inside): the
        answer of a lookup, readdir, resolve, create, link, commit or snapshot. Directories are
        not remembered: their chain of parents says at each call whether they are inside."""
        if export.subtree == "/":
            return
        if isinstance(answer, r.Attr):
            attrs = [answer]
        elif isinstance(answer, list):
            attrs = [entry.attr for entry in answer if isinstance(entry, r.DirEntry)]
        else:
            return
        files = {attr.ino for attr in attrs if not stat.S_ISDIR(attr.mode)}
        if files:
            self._seen_by(key_id, export).update(files)

    def _seen_by(self, key_id: str, export: Export) -> set[int]:
        """The files shown to this credential (the set itself, to add to)."""
        self._subtrees[key_id] = export.subtree
        return self._seen.setdefault(key_id, set())

    def moved(self, db: MetaDB, places: list[tuple[int, int]]) -> None:
        """A rename put each file of `places` (inode, its new directory) there: a credential
        that was shown one no longer sees it if that directory is outside its subtree (it
        moved out: another client's rename, as this one's could not name a directory outside)."""
        holders = [(key_id, ino, parent) for ino, parent in places  # a reclaim's thread may add a key
                   for key_id, seen in list(self._seen.items()) if ino in seen]
        if not holders:
            return
        with db.read() as txn:
            for key_id, ino, parent in holders:
                top = self._top(txn, self._subtrees.get(key_id, "/"))
                if top is None or not self._dir_inside(txn, parent, top):
                    self._seen[key_id].discard(ino)

    def visible_changes(self, db: MetaDB, key_id: str, export: Export, changes: list[r.Change]) -> list[r.Change]:
        """What of `changes` (the change feed's) this credential may be told: the inodes inside
        its export and the entries of directories inside it, as of now; a change left with
        neither is dropped (see the module's doc)."""
        if export.subtree == "/":
            return changes
        seen = self._seen.get(key_id, set())
        visible = []
        with db.read() as txn:
            top = self._top(txn, export.subtree)
            if top is None:
                return []
            for change in changes:
                inodes = [ino for ino in change.inodes if ino in seen or self._dir_inside(txn, ino, top)]
                entries = [(parent, name) for parent, name in change.entries if self._dir_inside(txn, parent, top)]
                if len(inodes) == len(change.inodes) and len(entries) == len(change.entries):
                    visible.append(change)
                elif inodes or entries:
                    visible.append(r.Change(change.seq, change.origin, inodes, entries))
        return visible

    def visible_locks(self, txn: Txn, key_id: str, export: Export, client: str, locks: list[r.LockInfo]
                      ) -> list[r.LockInfo]:
        """The locks of `locks` on files inside the export; the client ids of holders other than
        `client` left out (an id is what another client's calls are made as)."""
        return [info if info.client == client else msgspec.structs.replace(info, client="")
                for info in locks if self.inode_inside(txn, key_id, export, info.ino)]

    def visible_quotas(self, txn: Txn, export: Export, quotas: list[r.QuotaInfo]) -> list[r.QuotaInfo]:
        """The quotas of `quotas` on directories inside the export."""
        if export.subtree == "/":
            return quotas
        top = self._top(txn, export.subtree)
        return [] if top is None else [q for q in quotas if self._dir_inside(txn, q.ino, top)]

    def _top(self, txn: Txn, subtree: str) -> int | None:
        """The inode of the subtree's directory, None if there is none."""
        try:
            return self.namespace.resolve(txn, subtree.encode()).ino
        except FsError:
            return None

    def _statfs_inside(self, txn: Txn, key_id: str, export: Export, req: r.InodeReq) -> r.InodeReq:
        """A statfs of an inode outside the export asks for the export's root instead."""
        top = self._top(txn, export.subtree)
        if top is None:
            raise FsError(errno.EACCES, f"the export {export.subtree} does not exist")
        if req.ino == top or self.inode_inside(txn, key_id, export, req.ino):
            return req
        return msgspec.structs.replace(req, ino=top)

    def refused_locks(self, txn: Txn, key_id: str, export: Export, locks: list[r.LockReq]) -> set[int]:
        """The indexes in `locks` (a reclaim's) that this export refuses, each as a `lock` of it
        would be. Files not shown to this credential since the start are looked for first
        (`_look_for`). Runs in a thread (the walk reads LMDB): it only adds to the seen sets."""
        if export.subtree != "/":
            self._look_for(txn, key_id, export, {lock.ino for lock in locks})
        refused = set()
        for index, lock in enumerate(locks):
            try:
                self.admit(txn, key_id, export, "lock", lock)
            except FsError:
                refused.add(index)
        return refused

    def _look_for(self, txn: Txn, key_id: str, export: Export, inodes: set[int]) -> None:
        """Those of `inodes` found below the subtree (a walk of its directories, MAX_WALK
        entries at most) are remembered as shown to this credential."""
        seen = self._seen_by(key_id, export)
        top = self._top(txn, export.subtree)
        if top is None:
            return
        wanted = {ino for ino in inodes - seen if not self._dir_inside(txn, ino, top)}
        directories, read = [top], 0
        while directories and wanted:
            for _name, child in self.namespace.entries(txn, directories.pop(), None):
                read += 1
                if read > MAX_WALK:
                    return
                if child in wanted:
                    seen.add(child)
                    wanted.discard(child)
                elif stat.S_ISDIR(self.namespace.get(txn, child).mode):
                    directories.append(child)

    def inode_inside(self, txn: Txn, key_id: str, export: Export, ino: int) -> bool:
        if export.subtree == "/" or ino in self._seen.get(key_id, ()):
            return True
        top = self.namespace.resolve(txn, export.subtree.encode()).ino
        return self._dir_inside(txn, ino, top)

    def _check_inside(self, txn: Txn, key_id: str, export: Export, op: str, req: Any,
                      also_seen: Collection[int]) -> None:
        if op == "resolve":
            path = b"/" + b"/".join(p for p in req.path.split(b"/") if p and p != b".")
            top_path = export.subtree.rstrip("/").encode()
            if b".." in path.split(b"/") or not (path == top_path or path.startswith(top_path + b"/")):
                raise FsError(errno.EACCES, f"{path!r} is outside this credential's export {export.subtree}")
            return
        try:
            top = self.namespace.resolve(txn, export.subtree.encode()).ino
        except FsError:
            raise FsError(errno.EACCES, f"the export {export.subtree} does not exist") from None
        if op == "parent" and req.ino == top:
            raise FsError(errno.EACCES, "the parent of the export's root is outside it")
        seen = self._seen.get(key_id, set())
        for ino in _existing_inodes_named(op, req):
            if ino not in seen and ino not in also_seen and not self._dir_inside(txn, ino, top):
                raise FsError(errno.EACCES, f"inode {ino} is outside this credential's export {export.subtree}")

    def _dir_inside(self, txn: Txn, ino: int, top: int) -> bool:
        """Whether `ino` is a directory at or below `top` (a file is never: see the docstring)."""
        for _ in range(MAX_DEPTH):
            if ino == top:
                return True
            try:
                inode = self.namespace.get(txn, ino)
            except FsError:
                return False
            if not stat.S_ISDIR(inode.mode) or ino == ROOT_INODE or inode.parent in (0, ino):
                return False
            ino = inode.parent
        return False

    @staticmethod
    def _squashed(op: str, req: Any, maproot: int) -> Any:
        if isinstance(req, r.CreateReq):
            return msgspec.structs.replace(req, uid=req.uid or maproot, gid=req.gid or maproot)
        if isinstance(req, r.SetattrReq) and (req.uid == 0 or req.gid == 0):
            raise FsError(errno.EPERM, "a root-squashed export cannot give a file to root")
        if isinstance(req, r.CommitReq):
            create = req.create and ExportGuard._squashed("create", req.create, maproot)
            attrs = req.attrs and ExportGuard._squashed("setattr", req.attrs, maproot)
            return msgspec.structs.replace(req, create=create, attrs=attrs)
        if isinstance(req, r.SnapshotReq):  # copies of root's files are the squashed uid's
            return msgspec.structs.replace(req, root_owner=maproot)
        return req


def _existing_inodes_named(op: str, req: Any) -> set[int]:
    """The inodes a request names that must exist (and be inside): a create's new inode number
    (one the client reserved, for a file in a directory it leases) is made by it, in its parent."""
    if isinstance(req, r.CreateReq):
        return {req.parent}
    if isinstance(req, r.CommitReq) and req.create is not None:
        return {req.create.parent}
    if isinstance(req, r.ConcatReq):  # the sources' chunks become the target's: every one is read
        return {req.ino, *req.sources}
    if isinstance(req, r.QuotaLimitReq) and req.parent:  # a file its client still holds the create of
        return {req.parent}
    return named_inodes(req) - {0}  # 0: a field left out (a restore's place, a limit's parent)
