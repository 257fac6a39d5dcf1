"""A model of directory quotas (chunkfs/metaserver/quotas.py), the trash (trash.py) and snapshots
(snapshots.py) for the property-based test: a tree of directories and files, which directory
each file is charged through (its anchor), which changes a hard limit refuses, change by change
in the order the metaserver makes them, the files in the trash by id (their inode number), and
snapshots as independent copies (sizes only: the test compares sizes and listings)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(eq=False)
class MFile:
    size: int = 0
    links: int = 1
    anchor: MDir | None = None  # the directory its quotas are charged through (None: nowhere)


@dataclass(eq=False)
class MDir:
    parent: MDir | None = None
    children: dict[str, MDir | MFile] = field(default_factory=dict)
    quota: tuple[int, int] | None = None  # (bytes hard, inodes hard), 0: no limit
    removed: bool = False


class QuotaExceeded(Exception):
    pass


Charge = tuple[MDir, int, int]  # (anchor, bytes, inodes)


class QuotaModel:
    def __init__(self) -> None:
        self.root = MDir()
        self.trash: dict[int, tuple[MDir, str, MFile]] = {}  # id -> where it was, the file

    # ---- the tree ----------------------------------------------------------------------------
    def lookup(self, path: str) -> MDir | MFile | None:
        node: MDir | MFile | None = self.root
        for part in filter(None, path.split("/")):
            if not isinstance(node, MDir):
                return None
            node = node.children.get(part)
        return node

    def split(self, path: str) -> tuple[MDir | None, str]:
        parent, _, name = path.rpartition("/")
        node = self.lookup(parent)
        return (node if isinstance(node, MDir) else None), name

    def walk(self, top: MDir | None = None, prefix: str = ""):
        """(path, node) of everything below `top` (the root), parents first."""
        top = top or self.root
        for name, child in sorted(top.children.items()):
            path = f"{prefix}{name}"
            yield path, child
            if isinstance(child, MDir):
                yield from self.walk(child, path + "/")

    def path_of(self, directory: MDir) -> str:
        if directory is self.root:
            return ""
        return next(p for p, n in self.walk() if n is directory)

    def quota_dirs(self) -> list[tuple[str, MDir]]:
        return [(p, n) for p, n in self.walk() if isinstance(n, MDir) and n.quota is not None]

    @staticmethod
    def below(node: MDir, top: MDir) -> bool:
        """`node` is `top` or inside it."""
        walker: MDir | None = node
        while walker is not None:
            if walker is top:
                return True
            walker = walker.parent
        return False

    def usage(self, quota_dir: MDir) -> tuple[int, int]:
        """(bytes, inodes) charged below `quota_dir`, counted from the tree."""
        used_bytes = used_inodes = 0
        files = {id(n): n for _p, n in self.walk() if isinstance(n, MFile)}
        for _path, node in self.walk(quota_dir):
            if isinstance(node, MDir):
                used_inodes += 1
        for f in files.values():
            if f.links and f.anchor is not None and self.below(f.anchor, quota_dir):
                used_inodes += 1
                used_bytes += f.size
        return used_bytes, used_inodes

    # ---- charges: what the metaserver checks -------------------------------------------------
    def chain(self, anchor: MDir) -> list[MDir]:
        out, walker = [], anchor
        while walker is not None:
            if walker.quota is not None:
                out.append(walker)
            walker = walker.parent
        return out

    def subtree(self, directory: MDir) -> tuple[int, int]:
        return self.usage(directory)

    def change(self, old: Charge | None, new: Charge | None, moved_dir: MDir | None = None) -> None:
        """One inode row's charge goes from `old` to `new`: QuotaExceeded where the metaserver
        answers EDQUOT (nothing changes then: the caller rolls the whole operation back)."""
        if old == new:
            return
        old_q = self.chain(old[0]) if old else []
        new_q = self.chain(new[0]) if new else []
        below = (0, 0)
        if moved_dir is not None and {id(q) for q in old_q} != {id(q) for q in new_q}:
            below = self.subtree(moved_dir)
        deltas: dict[int, list] = {}
        for quotas, charge, sign in ((old_q, old, -1), (new_q, new, 1)):
            if charge is None:
                continue
            for q in quotas:
                d = deltas.setdefault(id(q), [q, 0, 0])
                d[1] += sign * (charge[1] + below[0])
                d[2] += sign * (charge[2] + below[1])
        for q, bytes_delta, inodes_delta in deltas.values():
            used_bytes, used_inodes = self.usage(q)
            bytes_hard, inodes_hard = q.quota
            if bytes_delta > 0 and bytes_hard and used_bytes + bytes_delta > bytes_hard:
                raise QuotaExceeded
            if inodes_delta > 0 and inodes_hard and used_inodes + inodes_delta > inodes_hard:
                raise QuotaExceeded

    @staticmethod
    def charge(f: MFile) -> Charge | None:
        return (f.anchor, f.size, 1) if f.links and f.anchor is not None else None

    # ---- operations: each returns whether it is refused (and then changes nothing) -----------
    def atomically(self, op) -> bool:
        saved = copy.deepcopy((self.root, self.trash))
        try:
            op()
        except QuotaExceeded:
            self.root, self.trash = saved
            return True
        return False

    def mkdir(self, parent: MDir, name: str) -> bool:
        def op():
            self.change(None, (parent, 0, 1))
            parent.children[name] = MDir(parent=parent)
        return self.atomically(op)

    def create(self, parent: MDir, name: str) -> bool:
        def op():
            self.change(None, (parent, 0, 1))
            parent.children[name] = MFile(anchor=parent)
        return self.atomically(op)

    def resize(self, f: MFile, size: int) -> bool:
        def op():
            self.change(self.charge(f), (f.anchor, size, 1) if f.anchor is not None else None)
            f.size = size
        return self.atomically(op)

    def drop_name(self, parent: MDir, name: str, ino: int) -> None:
        """Each change is checked against the tree as it is before it (the recorded usage); a
        file losing its last name goes to the trash as `ino`."""
        node = parent.children[name]
        if isinstance(node, MDir):
            self.change((parent, 0, 1), None)
            node.removed = True
        else:
            links = node.links - 1
            anchor = None if links and node.anchor is parent else node.anchor
            self.change(self.charge(node), (anchor, node.size, 1) if links and anchor is not None else None)
            node.links, node.anchor = links, anchor
            if not links:
                self.trash[ino] = (parent, name, node)
        del parent.children[name]

    def remove(self, parent: MDir, name: str, ino: int) -> bool:
        return self.atomically(lambda: self.drop_name(parent, name, ino))

    def restore(self, ino: int) -> str:
        """What a restore of `ino` to where it was gives: "ok", "EEXIST", "ENOENT" or "EDQUOT"."""
        parent, name, f = self.trash[ino]
        if parent.removed:
            return "ENOENT"
        if name in parent.children:
            return "EEXIST"

        def op():
            self.change(None, (parent, f.size, 1))
            f.links, f.anchor = 1, parent
            parent.children[name] = f
            del self.trash[ino]
        return "EDQUOT" if self.atomically(op) else "ok"

    def link(self, f: MFile, parent: MDir, name: str) -> bool:
        def op():
            f.links += 1
            parent.children[name] = f
        return self.atomically(op)

    def snapshot(self, node: MDir | MFile, dst_parent: MDir, dst_name: str) -> bool:
        """A copy of `node` as `dst_name`, made as the metaserver makes it: depth first, the
        last name of a directory first (so a hard-linked file is anchored where the metaserver
        anchors it), links inside the tree kept; refused if the quotas above `dst_parent` cannot
        take all of it."""
        def op():
            copies: dict[int, MFile] = {}
            holder = MDir()
            todo: list[tuple[MDir | MFile, MDir, str]] = [(node, holder, dst_name)]
            added_bytes = added_inodes = 0
            while todo:
                source, parent, name = todo.pop()
                if isinstance(source, MDir):
                    d = MDir(parent=parent)
                    parent.children[name] = d
                    added_inodes += 1
                    todo.extend((child, d, child_name) for child_name, child in sorted(source.children.items()))
                elif id(source) in copies:
                    copies[id(source)].links += 1
                    parent.children[name] = copies[id(source)]
                else:
                    copies[id(source)] = parent.children[name] = MFile(size=source.size, anchor=parent)
                    added_inodes += 1
                    added_bytes += source.size
            for q in self.chain(dst_parent):
                used_bytes, used_inodes = self.usage(q)
                bytes_hard, inodes_hard = q.quota
                if (added_bytes and bytes_hard and used_bytes + added_bytes > bytes_hard) or \
                        (inodes_hard and used_inodes + added_inodes > inodes_hard):
                    raise QuotaExceeded
            copy = holder.children[dst_name]
            for f in copies.values():
                if f.anchor is holder:
                    f.anchor = dst_parent
            if isinstance(copy, MDir):
                copy.parent = dst_parent
            dst_parent.children[dst_name] = copy
        return self.atomically(op)

    def rename(self, src_parent: MDir, src_name: str, dst_parent: MDir, dst_name: str, dst_ino: int) -> bool:
        def op():
            node = src_parent.children[src_name]
            if dst_name in dst_parent.children:
                if dst_parent.children[dst_name] is node:
                    return
                self.drop_name(dst_parent, dst_name, dst_ino)
            if isinstance(node, MDir):
                self.change((src_parent, 0, 1), (dst_parent, 0, 1), moved_dir=node)
                node.parent = dst_parent
            elif node.anchor is src_parent:
                self.change(self.charge(node), (dst_parent, node.size, 1))
                node.anchor = dst_parent
            del src_parent.children[src_name]
            dst_parent.children[dst_name] = node
        return self.atomically(op)
