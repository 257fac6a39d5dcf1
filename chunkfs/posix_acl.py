"""POSIX ACLs as the kernel hands them to FUSE: `system.posix_acl_access` and
`system.posix_acl_default` xattrs in the kernel's binary form (a little-endian u32 version 2,
then (u16 tag, u16 perm, u32 id) entries, sorted by tag then id).

The kernel enforces ACLs itself (the mount negotiates FUSE_POSIX_ACL); what is left to the
filesystem, and done here as ext4 does: the mode follows a new access ACL, a chmod rewrites the
access ACL, and a new entry inherits its directory's default ACL.
"""

from __future__ import annotations

import errno
import stat
import struct

from chunkfs.errors import FsError

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
HEADER = struct.Struct("<I")
ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF

Entry = tuple[int, int, int]  # (tag, perm, id)


def parse(value: bytes) -> list[Entry]:
    if len(value) < HEADER.size or (len(value) - HEADER.size) % ENTRY.size:
        raise FsError(errno.EINVAL, f"ACL of {len(value)} bytes is not a whole number of entries")
    if HEADER.unpack_from(value)[0] != VERSION:
        raise FsError(errno.EOPNOTSUPP, "unknown ACL version")
    entries = [ENTRY.unpack_from(value, offset) for offset in range(HEADER.size, len(value), ENTRY.size)]
    tags = [tag for tag, _perm, _id in entries]
    if any(tag not in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER) for tag in tags) or \
            any(tags.count(tag) != 1 for tag in (USER_OBJ, GROUP_OBJ, OTHER)) or tags.count(MASK) > 1 or \
            ((USER in tags or GROUP in tags) and MASK not in tags):
        raise FsError(errno.EINVAL, "malformed ACL")
    return entries


def encode(entries: list[Entry]) -> bytes:
    return HEADER.pack(VERSION) + b"".join(ENTRY.pack(*entry) for entry in sorted(entries, key=lambda e: (e[0], e[2])))


def is_minimal(entries: list[Entry]) -> bool:
    """True if the mode bits say all the ACL says (then no ACL is stored, as on ext4)."""
    return all(tag in (USER_OBJ, GROUP_OBJ, OTHER) for tag, _perm, _id in entries)


def permission_bits(entries: list[Entry]) -> int:
    """The rwxrwxrwx an access ACL stands for: the group class is the mask when there is one."""
    perms = {tag: perm for tag, perm, _id in entries}
    group = perms.get(MASK, perms[GROUP_OBJ])
    return (perms[USER_OBJ] & 7) << 6 | (group & 7) << 3 | (perms[OTHER] & 7)


def with_mode(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after a chmod to `mode` (the mask, if any, takes the group bits)."""
    has_mask = any(tag == MASK for tag, _perm, _id in entries)
    out = []
    for tag, perm, ident in entries:
        if tag == USER_OBJ:
            perm = (mode >> 6) & 7
        elif tag == MASK or (tag == GROUP_OBJ and not has_mask):
            perm = (mode >> 3) & 7
        elif tag == OTHER:
            perm = mode & 7
        out.append((tag, perm, ident))
    return out


def inherit(default: list[Entry], mode: int) -> tuple[list[Entry], int]:
    """A new entry's access ACL and mode from its directory's default ACL and the mode asked
    for (the umask plays no part): each class of the ACL is cut to the asked mode, and the
    mode to the ACL."""
    has_mask = any(tag == MASK for tag, _perm, _id in default)
    out = []
    for tag, perm, ident in default:
        if tag == USER_OBJ:
            perm &= (mode >> 6) & 7
            mode &= (perm << 6) | ~0o700
        elif tag == OTHER:
            perm &= mode & 7
            mode &= perm | ~0o007
        elif tag == MASK or (tag == GROUP_OBJ and not has_mask):
            perm &= (mode >> 3) & 7
            mode &= (perm << 3) | ~0o070
        out.append((tag, perm, ident))
    return out, mode


def check_target(name: bytes, file_mode: int) -> None:
    if name == DEFAULT and not stat.S_ISDIR(file_mode):
        raise FsError(errno.EACCES, "only directories have a default ACL")
