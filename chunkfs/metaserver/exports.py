"""Exports: what a client's (or gateway's) credential may reach, enforced by the metaserver on
every filesystem call, so hand-made requests get no more than the export allows (the kernel's
`default_permissions` on an honest mount is no boundary). As an exports file's line:

- `subtree`: every inode a call names (locks too) must be inside it. A directory is inside when its chain
  of parents reaches the subtree's directory; a file (which keeps no parent) when this
  credential was shown it inside: in an answer to a lookup, readdir, create or link made inside,
  or a `resolve` of a path below the subtree (the mount's start). So a file's inode number
  learnt elsewhere, or guessed, is refused (EACCES), and so is the parent of the subtree's root
  (`..` above the export). `statfs` is answered for the whole cluster.
- `read_only`: every change is EROFS (creates, writes' reservations and commits, setattr,
  xattrs, renames, removes, goals).
- `maproot`: root squash. What such a client creates as uid or gid 0 is owned by `maproot`
  instead (a snapshot's copies of root's files too), and it cannot chown or chgrp anything to 0
  (EPERM).

What is not covered (yet): the change feed tells every client the inode numbers and names that
changed anywhere (not file content), and the seen files of a credential are kept in memory only
(after a metaserver restart a client looks its files up again; until its kernel does, a call on
an inode it cached is EACCES).
"""

from __future__ import annotations

import errno
import stat
from typing import Any

import msgspec

from chunkfs import ROOT_INODE
from chunkfs.credentials import Export
from chunkfs.errors import FsError
from chunkfs.metaserver.db import Txn
from chunkfs.metaserver.namespace import Namespace
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import named_inodes

CHANGES = frozenset({"create", "link", "remove", "rename", "setattr", "setxattr", "removexattr", "commit", "goal",
                     "reserve", "reserve_inodes", "release_orphan", "snapshot", "trash_time"})
WHOLE_CLUSTER = frozenset({"statfs", "release_leases", "reserve", "reserve_inodes", "locks", "cancel_lock"})
MAX_DEPTH = 4096


class ExportGuard:
    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self._seen: dict[str, set[int]] = {}  # key id -> files shown to it inside its subtree

    def admit(self, txn: Txn, key_id: str, export: Export, op: str, req: Any) -> Any:
        """`req` as the export lets it through (root squashed), or FsError (EROFS, EPERM, EACCES)."""
        if export.read_only and op in CHANGES:
            raise FsError(errno.EROFS, "this credential's export is read-only")
        if op == "goal" and not export.min_goal <= req.goal <= export.max_goal:
            raise FsError(errno.EPERM, f"this credential's export sets goals {export.min_goal}-{export.max_goal} only")
        if export.maproot >= 0:
            req = self._squashed(op, req, export.maproot)
        if export.subtree != "/" and op not in WHOLE_CLUSTER:
            self._check_inside(txn, key_id, export, op, req)
        return req

    def shown(self, key_id: str, export: Export, answer: Any) -> None:
        """Remember the files an answer showed this credential (its request was inside): the
        answer of a lookup, readdir, resolve, create, link, commit or snapshot."""
        if export.subtree == "/":
            return
        seen = self._seen.setdefault(key_id, set())
        if isinstance(answer, r.Attr):
            seen.add(answer.ino)
        elif isinstance(answer, list):
            seen.update(entry.attr.ino for entry in answer if isinstance(entry, r.DirEntry))

    def inode_inside(self, txn: Txn, key_id: str, export: Export, ino: int) -> bool:
        if export.subtree == "/" or ino in self._seen.get(key_id, ()):
            return True
        top = self.namespace.resolve(txn, export.subtree.encode()).ino
        return self._dir_inside(txn, ino, top)

    def _check_inside(self, txn: Txn, key_id: str, export: Export, op: str, req: Any) -> None:
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
            if ino not in seen and not self._dir_inside(txn, ino, top):
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
    if isinstance(req, r.QuotaLimitReq) and req.parent:  # a file its client still holds the create of
        return {req.parent}
    return named_inodes(req) - {0}  # 0: a field left out (a restore's place, a limit's parent)
