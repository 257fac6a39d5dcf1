"""Runs each filesystem operation on two directory trees at once (a chunkfs one and a local one)
and reports both outcomes, for the model test in test_posix_model.py.

Standard library only: the test starts this file as a subprocess, under whatever python3 the
user it runs as can execute (the non-root test runs it as `nobody`). The worker owns the open
file descriptors, so files stay open across steps; it speaks pickled (operation, args) requests
on stdin and pickled replies on stdout.

An outcome is ("ok", value) or ("err", errno name); operations compare outcomes, never fds.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import pickle
import stat
import sys
from collections.abc import Callable
from typing import Any

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, str(exc.errno)))


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def user_xattrs(path: str, follow: bool) -> dict[str, bytes]:
    names = sorted(n for n in os.listxattr(path, follow_symlinks=follow) if n.startswith("user."))
    return {n: os.getxattr(path, n, follow_symlinks=follow) for n in names}


def content_digest(path: str) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        h, total = hashlib.sha256(), 0
        while block := os.read(fd, 1 << 20):
            h.update(block)
            total += len(block)
        return total, h.hexdigest()
    finally:
        os.close(fd)


def describe(path: str, st: os.stat_result, first_path_of_inode: dict[int, str], rel: str) -> dict:
    """What a user can observe about one entry, without following symlinks (no times)."""
    kind = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo"}.get(stat.S_IFMT(st.st_mode), oct(stat.S_IFMT(st.st_mode)))
    rec: dict[str, Any] = {"type": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "nlink": st.st_nlink,
                           "uid": st.st_uid, "gid": st.st_gid}
    if kind != "dir":
        rec["size"] = st.st_size
        rec["same_inode_as"] = first_path_of_inode.setdefault(st.st_ino, rel)
    if kind == "symlink":
        rec["target"] = outcome(lambda: os.readlink(path))
    rec["xattrs"] = outcome(lambda: user_xattrs(path, follow=False))
    if kind == "file":
        rec["content"] = outcome(lambda: content_digest(path))
    if kind == "dir":
        rec["entries"] = outcome(lambda: sorted(os.listdir(path)))
    return rec


def snapshot(root: str, root_fd: int) -> dict[str, dict]:
    """Every entry under `root` (and the root as "."), keyed by relative path, in sorted order.
    The root itself is seen through `root_fd`: a relative root (".") and an absolute one need
    different permissions to be named, their contents the same."""
    inodes: dict[int, str] = {}
    st = os.fstat(root_fd)
    tree = {".": {"type": "dir", "mode": oct(stat.S_IMODE(st.st_mode)), "nlink": st.st_nlink, "uid": st.st_uid,
                  "gid": st.st_gid, "xattrs": outcome(lambda: user_xattrs(root_fd, True)),
                  "entries": outcome(lambda: sorted(os.listdir(root_fd)))}}
    todo = [("", tree["."]["entries"][1] if tree["."]["entries"][0] == "ok" else [])]
    while todo:
        rel_dir, names = todo.pop(0)
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(root, rel)
            try:
                st = os.lstat(path)
            except OSError as exc:  # in a directory we may list but not search
                tree[rel] = {"lstat": ("err", errno.errorcode.get(exc.errno, str(exc.errno)))}
                continue
            tree[rel] = rec = describe(path, st, inodes, rel)
            if rec["type"] == "dir" and rec["entries"][0] == "ok":
                todo.append((rel, rec["entries"][1]))
    return tree


def clear(root: str) -> None:
    """Remove everything under `root`, giving ourselves back the permissions a test took away."""
    for dirpath, dirnames, _filenames in os.walk(root, topdown=True, onerror=None):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)


class Slot:
    def __init__(self, fds: list[int | None], is_dir: bool) -> None:
        self.fds = fds
        self.is_dir = is_dir


class Twin:
    """The two trees and the files open in both."""

    def __init__(self, fs_root: str, ref_root: str) -> None:
        self.roots = (fs_root, ref_root)
        self.slots: dict[int, Slot] = {}
        # a symlink to "." lets a test chmod or chown a root: reset puts them back
        self.root_fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY) for root in self.roots]
        self.root_owners = [(st.st_uid, st.st_gid) for st in map(os.fstat, self.root_fds)]

    # ---- plumbing ---------------------------------------------------------------------------
    def on_paths(self, fn: Callable[..., Any], *paths: str, rest: tuple = ()) -> list:
        return [outcome(lambda root=root: fn(*(os.path.join(root, p) for p in paths), *rest))
                for root in self.roots]

    def on_fds(self, slot: int, fn: Callable[..., Any], *args: Any) -> list:
        return [outcome(lambda fd=fd: fn(fd, *args)) for fd in self.slots[slot].fds]

    def close_slot(self, slot: int) -> list:
        s = self.slots.pop(slot)
        return [outcome(lambda fd=fd: os.close(fd)) for fd in s.fds]

    # ---- requests ---------------------------------------------------------------------------
    def reset(self) -> None:
        for slot in list(self.slots):
            self.close_slot(slot)
        for root, fd, (uid, gid) in zip(self.roots, self.root_fds, self.root_owners, strict=True):
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o755)
            clear(root)

    def snapshot(self) -> tuple[dict, dict, dict]:
        fds = {slot: [outcome(lambda fd=fd: fstat_view(fd)) for fd in s.fds] for slot, s in self.slots.items()}
        return snapshot(self.roots[0], self.root_fds[0]), snapshot(self.roots[1], self.root_fds[1]), fds

    def open(self, slot: int, path: str, flags: int, mode: int) -> list:
        if slot in self.slots:
            self.close_slot(slot)
        results = self.on_paths(os.open, path, rest=(flags | os.O_NONBLOCK, mode))  # fifos must not block
        fds = [value if kind == "ok" else None for kind, value in results]
        if any(fd is not None for fd in fds):
            if None in fds:
                for fd in fds:
                    if fd is not None:
                        os.close(fd)
            else:
                self.slots[slot] = Slot(fds, stat.S_ISDIR(os.fstat(fds[1]).st_mode))
        return [(kind, None if kind == "ok" else value) for kind, value in results]

    def close(self, slot: int) -> list:
        return self.close_slot(slot)

    def fd_op(self, slot: int, op: str, *args: Any) -> list:
        if op == "lseek" and self.slots[slot].is_dir:
            return [("ok", "skipped: directory offsets are filesystem-specific")] * 2
        fn = {"pwrite": lambda fd, off, data: os.pwrite(fd, data, off),
              "pread": lambda fd, off, size: os.pread(fd, size, off),
              "write": os.write, "read": os.read, "lseek": os.lseek,
              "ftruncate": os.ftruncate, "fsync": os.fsync, "fchmod": os.fchmod,
              "fstat": fstat_view}[op]
        return self.on_fds(slot, fn, *args)

    def path_op(self, op: str, *args: Any) -> list:
        paths = 2 if op in TWO_PATH_OPS else 1
        return self.on_paths(OPS[op], *args[:paths], rest=args[paths:])

    def open_slots(self) -> list[int]:
        return sorted(self.slots)


def fstat_view(fd: int) -> dict:
    st = os.fstat(fd)
    view = {"mode": oct(st.st_mode), "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid}
    if not stat.S_ISDIR(st.st_mode):
        view["size"] = st.st_size
    return view


def stat_view(path: str, follow: bool) -> dict:
    st = os.stat(path, follow_symlinks=follow)
    view = {"mode": oct(st.st_mode), "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid}
    if not stat.S_ISDIR(st.st_mode):
        view["size"] = st.st_size
    return view


def write_file(path: str, offset: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# operations on paths: the first argument is a path (the first two for TWO_PATH_OPS)
OPS: dict[str, Callable[..., Any]] = {
    "write_file": write_file,
    "truncate": os.truncate,
    "rename": os.rename,
    "renameat2": renameat2,
    "link": lambda src, dst, follow: os.link(src, dst, follow_symlinks=follow),
    "unlink": os.unlink,
    "rmdir": os.rmdir,
    "mkdir": os.mkdir,
    "mkfifo": os.mkfifo,
    "chmod": lambda path, mode, follow: os.chmod(path, mode, follow_symlinks=follow),
    "chown": lambda path, uid, gid, follow: os.chown(path, uid, gid, follow_symlinks=follow),
    "symlink": lambda path, target: os.symlink(target, path),
    "readlink": os.readlink,
    "stat": stat_view,
    "listdir": lambda path: sorted(os.listdir(path)),
    "setxattr": lambda path, name, value, flags, follow: os.setxattr(path, name, value, flags,
                                                                     follow_symlinks=follow),
    "getxattr": lambda path, name, follow: os.getxattr(path, name, follow_symlinks=follow),
    "removexattr": lambda path, name, follow: os.removexattr(path, name, follow_symlinks=follow),
    "listxattr": lambda path, follow: user_xattrs(path, follow),
}
TWO_PATH_OPS = {"rename", "renameat2", "link"}


def serve(twin: Twin) -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            method, args = pickle.load(stdin)
        except EOFError:
            return
        try:
            result = ("ok", getattr(twin, method)(*args))
            reply = (result, twin.open_slots())
        except Exception as exc:  # a bug in the worker itself: report it, keep serving
            reply = (("crash", f"{type(exc).__name__}: {exc}"), twin.open_slots())
        pickle.dump(reply, stdout)
        stdout.flush()


if __name__ == "__main__":
    os.umask(0o022)
    serve(Twin(sys.argv[1], sys.argv[2]))
