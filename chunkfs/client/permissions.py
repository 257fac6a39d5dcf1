"""Permission checks of the Python API: the ones the kernel makes for a mount.

A mount leaves permissions to the kernel (`default_permissions`, POSIX ACLs in
`system.posix_acl_access`); the API has no kernel in between, so it makes the same checks
itself, for the identity it was connected as, before each call: search permission on every
directory of a path, read/write on open, write and search on a directory whose entries change,
the sticky bit, owner-only attribute changes. Root (uid 0) passes every check but executing a
file that nobody may execute, as in the kernel.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from collections.abc import Awaitable, Callable

from chunkfs import posix_acl
from chunkfs.errors import FsError
from chunkfs.protocol import records as r

READ, WRITE, SEARCH = 4, 2, 1  # the rwx bits a check asks for
EXECUTE = SEARCH

AclLoader = Callable[[int], Awaitable[bytes | None]]  # an inode's access ACL, None if it has none


@dataclass(frozen=True)
class Identity:
    """Who the caller is: owner of what it creates, subject of every permission check."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int = 0o022

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def _denied(what: str) -> FsError:
    return FsError(errno.EACCES, f"permission denied: {what}")


async def check_access(attr: r.Attr, who: Identity, want: int, load_acl: AclLoader, what: str = "") -> None:
    """EACCES unless `who` may do `want` (READ|WRITE|SEARCH bits) to `attr`."""
    if who.is_root:
        if want & EXECUTE and not stat.S_ISDIR(attr.mode) and not attr.mode & 0o111:
            raise _denied(what or "no execute bit")
        return
    granted = await _granted(attr, who, load_acl)
    if want & ~granted & 0o7:
        raise _denied(what or f"inode {attr.ino}")


async def _granted(attr: r.Attr, who: Identity, load_acl: AclLoader) -> int:
    """The rwx bits `who` has on `attr` (POSIX.1e ACL evaluation when it has an ACL)."""
    mode = attr.mode
    if who.uid == attr.uid:
        return (mode >> 6) & 7
    acl = await load_acl(attr.ino) if attr.has_xattrs else None
    if acl is None:
        if who.in_group(attr.gid):
            return (mode >> 3) & 7
        return mode & 7
    entries = posix_acl.parse(acl)
    mask = next((perm for tag, perm, _id in entries if tag == posix_acl.MASK), 7)
    for tag, perm, ident in entries:
        if tag == posix_acl.USER and ident == who.uid:
            return perm & mask
    group_perms = [perm for tag, perm, ident in entries
                   if (tag == posix_acl.GROUP_OBJ and who.in_group(attr.gid))
                   or (tag == posix_acl.GROUP and who.in_group(ident))]
    if group_perms:
        combined = 0
        for perm in group_perms:
            combined |= perm
        return combined & mask
    return next(perm for tag, perm, _id in entries if tag == posix_acl.OTHER)


def check_owner(attr: r.Attr, who: Identity, what: str) -> None:
    """EPERM unless `who` owns `attr` (or is root): chmod, utime to given times, ACLs."""
    if not who.is_root and who.uid != attr.uid:
        raise FsError(errno.EPERM, f"operation not permitted: {what} (not the owner)")


def check_sticky(directory: r.Attr, victim: r.Attr, who: Identity, what: str) -> None:
    """In a sticky directory (/tmp), only the owner of an entry or of the directory removes it."""
    if directory.mode & stat.S_ISVTX and not who.is_root and who.uid not in (directory.uid, victim.uid):
        raise FsError(errno.EPERM, f"operation not permitted: {what} (sticky directory)")


def check_chown(attr: r.Attr, who: Identity, uid: int, gid: int) -> None:
    """Only root gives a file away; its owner may change its group to one of its own groups."""
    if who.is_root:
        return
    if uid not in (-1, attr.uid) or who.uid != attr.uid or (gid not in (-1, attr.gid) and not who.in_group(gid)):
        raise FsError(errno.EPERM, "operation not permitted: chown")


def mode_for_chmod(attr: r.Attr, who: Identity, mode: int) -> int:
    """The mode a chmod sets: without setgid when the caller is not in the file's group (the
    kernel drops it so)."""
    mode &= 0o7777
    if not who.is_root and mode & stat.S_ISGID and not stat.S_ISDIR(attr.mode) and not who.in_group(attr.gid):
        mode &= ~stat.S_ISGID
    return mode


def check_xattr(attr: r.Attr, who: Identity, name: bytes, writing: bool) -> int:
    """What an xattr call needs beside `check_access` (returned: the rwx bits to check, 0 for
    none): user.* like the file's data, trusted.* root only, ACLs and security.* set by their
    owner or root."""
    if name.startswith(b"trusted."):
        if not who.is_root:
            raise FsError(errno.EPERM, "operation not permitted: trusted.* attributes are root's")
        return 0
    if name in posix_acl.NAMES or name.startswith(b"security."):
        if writing:
            check_owner(attr, who, "set " + name.decode(errors="replace"))
        return 0
    if name.startswith(b"user."):
        if not (stat.S_ISREG(attr.mode) or stat.S_ISDIR(attr.mode)):
            raise FsError(errno.EPERM, "user.* attributes are for files and directories only")
        return WRITE if writing else READ
    raise FsError(errno.EOPNOTSUPP, f"unknown attribute namespace: {name.decode(errors='replace')}")
