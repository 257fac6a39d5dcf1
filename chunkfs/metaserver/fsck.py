"""`chunkfs fsck`: every file's chunks checked against the registry, one page at a time.

The walk is depth first over the namespace from a root directory, in name order; a page stops
after `limit` entries and hands back a cursor (the directories it is inside and the last name
done in each), so a big namespace is many small read transactions, never one huge answer, and
nothing is kept on the server between pages. What changes between pages is seen or not, as with
any walk of a live filesystem.

A chunk's replica is *live* when its server is alive and has not reported that copy corrupt.
Each chunk with a problem counts once, under the worst: missing (no live replica: its data
cannot be read now) > corrupt (a copy was reported corrupt and is still recorded, or the chunk is
not back at its goal since) > under goal > over goal.
"""

from __future__ import annotations

import stat

from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import Txn
from chunkfs.metaserver.namespace import Inode, Namespace
from chunkfs.protocol import records as r

MAX_PAGE_ENTRIES = 10_000

Version = tuple[int, int]


def check_page(txn: Txn, namespace: Namespace, chunks: ChunkTable, alive: set[str],
               corrupt_reports: dict[Version, set[str]], req: r.FsckReq) -> r.FsckPage:
    limit = max(1, min(req.limit, MAX_PAGE_ENTRIES))
    root = namespace.get(txn, req.root)
    page = r.FsckPage(files_checked=0, chunks_checked=0, problems=[], cursor=[])
    if not stat.S_ISDIR(root.mode):
        if not req.cursor:
            _check(page, txn, namespace, chunks, alive, corrupt_reports, b"", req.root, root)
        return page
    stack = [r.FsckFrame(f.ino, f.name, f.after) for f in req.cursor] or [r.FsckFrame(req.root, b"")]
    visited = 0
    while stack and visited < limit:
        frame = stack[-1]
        for name, child in namespace.entries(txn, frame.ino, frame.after):
            frame.after = name
            visited += 1
            inode = namespace.get(txn, child)
            if stat.S_ISDIR(inode.mode):
                stack.append(r.FsckFrame(child, name))
                break
            if stat.S_ISREG(inode.mode):
                path = b"/".join([*(f.name for f in stack[1:]), name])
                _check(page, txn, namespace, chunks, alive, corrupt_reports, path, child, inode)
            if visited >= limit:
                break
        else:
            stack.pop()
    page.cursor = stack
    return page


def _check(page: r.FsckPage, txn: Txn, namespace: Namespace, chunks: ChunkTable,
           alive: set[str], corrupt_reports: dict[Version, set[str]], path: bytes, ino: int,
           inode: Inode) -> None:
    own_goal = inode.goal or namespace.default_goal
    found = r.FileProblems(path=path, ino=ino, goal=own_goal, chunks=0)
    shared = chunks.any_shared(txn)
    for _index, rec in chunks.records(txn, ino):
        found.chunks += 1
        goal = chunks.shared_goal(txn, rec.chunk_id, rec.version, own_goal) if shared else own_goal
        reported = corrupt_reports.get((rec.chunk_id, rec.version), set())
        live = sum(1 for s in rec.replicas if s in alive and s not in reported)
        if live == 0:
            found.missing += 1
        elif reported and (reported.intersection(rec.replicas) or live < goal):
            found.corrupt += 1
        elif live < goal:
            found.under_goal += 1
        elif live > goal:
            found.over_goal += 1
    page.files_checked += 1
    page.chunks_checked += found.chunks
    if found.missing or found.corrupt or found.under_goal or found.over_goal:
        page.problems.append(found)
