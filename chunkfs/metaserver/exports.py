"""Exports: what a client's (or gateway's) credential may reach, enforced by the metaserver on
every filesystem call, so hand-made requests get no more than the export allows (the kernel's
`default_permissions` on an honest mount is no boundary). As an exports file's line:

- `subtree`: every inode a call names (locks too) must be inside it. A directory is inside when its chain
  of parents reaches the subtree's directory, judged at every call (so one moved out by another
  client is outside from then on); a file (whose links may be anywhere) when this credential
  was shown it inside (in an answer to a lookup, readdir, create or link made inside, or a
  `resolve` of a path below the subtree: the mount's start) and it is still linked inside
  (`_file_inside`). So a file's inode number learnt elsewhere, or guessed, is refused (EACCES),
  and so is the parent of the subtree's root (`..` above the export); so is a file shown once
  that has since left: renamed out, its directory moved out, or its links inside removed while
  it keeps one outside (a hard link out). A call naming anything outside is EACCES whatever
  it is, a rename or link across the edge too (not EXDEV: that would tell a directory from
  nothing). A `statfs` of an inode outside is answered for the subtree's root (its quota's
  figures, or the cluster's), not refused: tools ask it of the root; a lock listing shows the
  locks on files inside only.
- The change feed (`visible_changes`): a client is told only of what it could see. A change's
  inodes are kept when inside (as above), its entries when their directory is inside, at the time
  of the poll; so a rename out of the subtree reaches it as an unlink of the old name, a rename
  in as a create of the new one, and a change wholly outside is not sent at all. Its sequence
  number still counts: the feed's numbers are the cluster's, so a client can tell how many
  changes were made elsewhere (not what or where); accepted in the threat model (README,
  "Security"): which changes an export sees is decided at each poll (a directory moved in or
  out changes it), so numbers of its own would need every change judged against every export
  as it is made, and lock grants carry the feed's number a mount waits for.
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

Whether a file shown is still linked inside: chunkfs keeps no list of a file's links, only the
directory of one of them (`Inode.parent`, 0 once that link goes). A file with a link in a
directory inside is inside; a file whose one link is in a directory outside is not; a file with
no name (unlinked while open, or in the trash) stays visible to those shown it (an open file
keeps working). Otherwise (several links, the known one outside or none known) the seen set
decides, and after any change of the file's links (a remove, a rename) it is looked for below
the subtree at its next use (a walk of at most MAX_WALK entries; not found, it is outside).

What is not covered (yet): the seen files of a credential are kept in memory only (after a
metaserver restart a client looks its files up again; until its kernel does, a call on an inode
it cached is EACCES, but for the files it reclaims locks on); a file with several links stays
seen when the directory of the link it was shown by is moved out while its known link is
elsewhere outside, until one of its links changes.
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
        self._relinked: dict[str, set[int]] = {}  # key id -> files of those whose links changed since

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
            self._relinked.get(key_id, set()).difference_update(files)

    def _seen_by(self, key_id: str, export: Export) -> set[int]:
        """The files shown to this credential (the set itself, to add to)."""
        return self._seen.setdefault(key_id, set())

    def links_changed(self, inodes: Collection[int]) -> None:
        """A remove or rename changed the links of `inodes`: a credential shown one of them
        looks for it below its subtree at its next use, unless its known link decides
        (`_file_inside`). Nothing is read here: the look costs only those who use the file."""
        for key_id, seen in list(self._seen.items()):  # a reclaim's thread may add a key
            moved = seen.intersection(inodes)
            if moved:
                self._relinked.setdefault(key_id, set()).update(moved)

    def visible_changes(self, db: MetaDB, key_id: str, export: Export, changes: list[r.Change]) -> list[r.Change]:
        """What of `changes` (the change feed's) this credential may be told: the inodes inside
        its export and the entries of directories inside it, as of now; a change left with
        neither is dropped (see the module's doc)."""
        if export.subtree == "/":
            return changes
        visible = []
        with db.read() as txn:
            top = self._top(txn, export.subtree)
            if top is None:
                return []
            for change in changes:
                inodes = [ino for ino in change.inodes
                          if self._dir_inside(txn, ino, top) or self._file_inside(txn, key_id, ino, top)]
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
        """Those of `inodes` found below the subtree (`_found_below`) are remembered as shown
        to this credential."""
        seen = self._seen_by(key_id, export)
        top = self._top(txn, export.subtree)
        if top is None:
            return
        seen.update(self._found_below(txn, top, {ino for ino in inodes - seen if not self._dir_inside(txn, ino, top)}))

    def _found_below(self, txn: Txn, top: int, wanted: set[int]) -> set[int]:
        """Those of `wanted` linked in a directory at or below `top` (a walk of its directories,
        MAX_WALK entries at most: beyond that, not found)."""
        wanted, found = set(wanted), set[int]()
        directories, read = [top], 0
        while directories and wanted:
            for _name, child in self.namespace.entries(txn, directories.pop(), None):
                read += 1
                if read > MAX_WALK:
                    return found
                if child in wanted:
                    found.add(child)
                    wanted.discard(child)
                elif stat.S_ISDIR(self.namespace.get(txn, child).mode):
                    directories.append(child)
        return found

    def _file_inside(self, txn: Txn, key_id: str, ino: int, top: int) -> bool:
        """Whether file `ino`, if shown to this credential, is still inside (see the module's
        doc): its known link decides when it can; else, after a change of its links, it is
        looked for below the subtree, once. A file found outside is forgotten (shown again only
        by a lookup inside, if it comes back)."""
        seen = self._seen.get(key_id)
        if seen is None or ino not in seen:
            return False
        relinked = self._relinked.get(key_id, set())
        placed = self._placed_inside(txn, ino, top)
        if placed is None and ino in relinked:
            placed = bool(self._found_below(txn, top, {ino}))
        relinked.discard(ino)
        if placed is False:
            seen.discard(ino)
            return False
        return True

    def _placed_inside(self, txn: Txn, ino: int, top: int) -> bool | None:
        """What file `ino`'s known link says: True when it is linked inside (or has no name:
        unlinked while open, or in the trash; or is gone: the call fails on its own), False
        when its one link is outside, None when that cannot be told without a look."""
        try:
            inode = self.namespace.get(txn, ino)
        except FsError:
            return True
        if inode.nlink == 0 or (inode.parent and self._dir_inside(txn, inode.parent, top)):
            return True
        if inode.nlink == 1 and inode.parent:
            return False
        return None

    def inode_inside(self, txn: Txn, key_id: str, export: Export, ino: int) -> bool:
        if export.subtree == "/":
            return True
        top = self.namespace.resolve(txn, export.subtree.encode()).ino
        return self._dir_inside(txn, ino, top) or self._file_inside(txn, key_id, ino, top)

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
        for ino in _existing_inodes_named(op, req):
            if ino not in also_seen and not self._dir_inside(txn, ino, top) and not self._file_inside(txn, key_id,
                                                                                                   ino, top):
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
