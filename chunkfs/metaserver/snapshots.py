"""`chunkfs snapshot SRC DST`: a copy of a file or a tree made in one transaction from metadata
alone. The copy's files hold the same chunk versions as their sources (`ChunkTable.copy_records`:
shared, counted by the `holders` rows), so it takes no chunk space; a later write to either
side commits a new version for that side only (chunk writes are copy-on-write already), and a
version shared is deleted only when its last holder lets it go (`ChunkTable.release`).

Promises:
- All or nothing: the whole copy is one LMDB transaction (a metaserver killed during it leaves
  no part of it), committed in the writer thread.
- Names: EEXIST if DST exists, EINVAL for a copy of a directory into itself or below it.
- `read_only`: every copy is marked read-only once the tree is whole, so any later change to
  it is EROFS (`Namespace.put`); copies of a read-only snapshot are writable unless asked.
- Hard links inside the tree stay links between the copies; the copies are charged to the
  quotas above DST (EDQUOT) and take their sources' modes, owners, times, goals, trash times and
  xattrs (for a root-squashed caller, `root_owner`: owner or group 0 becomes that id).
- It copies what the metaserver has: a file being written elsewhere is copied as of its last
  commit, as any reader would see it.
"""

from __future__ import annotations

import errno
import stat

import msgspec

from chunkfs.errors import FsError
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import Txn
from chunkfs.metaserver.namespace import Inode, Namespace
from chunkfs.protocol import records as r
from chunkfs.metaserver.change_clock import now_ns
from chunkfs.protocol.limits import check_name


class Snapshots:
    def __init__(self, namespace: Namespace, chunks: ChunkTable) -> None:
        self.namespace, self.chunks = namespace, chunks

    def snapshot(self, txn: Txn, req: r.SnapshotReq) -> r.Attr:
        check_name(req.name)
        namespace = self.namespace
        source = namespace.get(txn, req.ino)
        if not stat.S_ISDIR(namespace.get(txn, req.parent).mode):
            raise FsError(errno.ENOTDIR, f"inode {req.parent} is not a directory")
        if namespace.child(txn, req.parent, req.name) is not None:
            raise FsError(errno.EEXIST, f"{req.name!r} exists")
        if stat.S_ISDIR(source.mode) and namespace.inside(txn, req.ino, req.parent):
            raise FsError(errno.EINVAL, "a snapshot of a directory cannot go inside it")
        now = now_ns()
        copies: dict[int, int] = {}  # source file -> its copy, for hard links inside the tree
        made: list[int] = []  # every copy, to be marked read-only once the tree is whole
        todo = [(req.ino, req.parent, req.name)]
        while todo:
            ino, parent, name = todo.pop()
            if ino in copies:
                namespace.add_name(txn, copies[ino], parent, name)
                continue
            inode = namespace.get(txn, ino)
            is_dir = stat.S_ISDIR(inode.mode)
            copy = msgspec.structs.replace(inode, nlink=2 if is_dir else 1, parent=parent, ctime_ns=now,
                                           read_only=False, **_squashed_owner(inode, req.root_owner))
            new = namespace.insert(txn, parent, name, copy, xattrs_of=ino if inode.xattr_count else 0)
            made.append(new)
            if is_dir:
                todo.extend((child, new, child_name) for child_name, child in list(namespace.entries(txn, ino, None)))
            else:
                copies[ino] = new
                if stat.S_ISREG(inode.mode):
                    self.chunks.copy_records(txn, ino, new)
        if req.read_only:
            for ino in made:
                namespace.put(txn, ino, msgspec.structs.replace(namespace.get(txn, ino), read_only=True))
        return namespace.getattr(txn, namespace.child(txn, req.parent, req.name) or 0)


def _squashed_owner(inode: Inode, root_owner: int) -> dict[str, int]:
    """The owner fields of a copy made for a root-squashed caller (none changed otherwise)."""
    if root_owner < 0:
        return {}
    return {field: root_owner for field in ("uid", "gid") if getattr(inode, field) == 0}
