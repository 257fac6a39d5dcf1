"""What chunkfs accepts: the documented limits of every value that crosses the wire, and the
checks of a value against them.

The servers check every request against these before any handler runs (the request records'
constraints and `__post_init__` checks, see `records.py`; path parts, query parameters and
headers in `chunkfs.request_checks`), so a value out of range is answered 400 with its errno and
is never stored. The mount checks what it is answered against the same limits (a value the
kernel cannot take is refused for that entry, not for the whole call).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import stat
from typing import TYPE_CHECKING

from chunkfs import CHUNK_SIZE, MAX_NAME_BYTES
from chunkfs.errors import FsError

if TYPE_CHECKING:
    from chunkfs.protocol.records import Attr

MAX_ID = 2**63 - 1
"""Inode numbers, chunk ids and chunk versions are 1..MAX_ID (version 0 and inode 0 mean "none";
they fit a signed 64-bit integer everywhere, so no counter can run past 2^64)."""

MAX_FILE_SIZE = 2**50
"""The largest file: 1 PiB, 2^28 chunks of 4 MiB (far below what st_size and the chunk table's
64-bit index can hold, so a size plus a chunk's length never overflows). A larger size is EFBIG."""

MAX_CHUNK_INDEX = MAX_FILE_SIZE // CHUNK_SIZE
MAX_UID = 2**32 - 1  # uid_t and gid_t are 32 bits (and so is the FUSE rdev)
MAX_SYMLINK_BYTES = 4095  # PATH_MAX less its NUL
MAX_PATH_BYTES = 4096
MAX_XATTR_NAME_BYTES = 255  # the kernel's XATTR_NAME_MAX
MAX_XATTR_VALUE_BYTES = 65536  # the kernel's XATTR_SIZE_MAX
MIN_TIME_NS, MAX_TIME_NS = -(2**63), 2**63 - 1  # timestamps are signed 64-bit nanoseconds
MAX_TOKEN_CHARS = 64
TOKEN = re.compile(r"[0-9A-Za-z_.-]{1,64}")
"""Client ids (`X-Chunkfs-Client`), request ids and server ids: short ASCII tokens."""

FILE_TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                        stat.S_IFIFO, stat.S_IFSOCK})
MAX_MODE = 0o177777  # a file type and the 12 permission bits


def check_name(name: bytes) -> None:
    """A directory entry's name: 1..255 bytes, no `/` or NUL, not `.` or `..`. Any other bytes
    are fine (names are bytes end to end: a name that is not UTF-8 works as on a local disk)."""
    if len(name) > MAX_NAME_BYTES:
        raise FsError(errno.ENAMETOOLONG, f"name is {len(name)} bytes, the limit is {MAX_NAME_BYTES}")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FsError(errno.EINVAL, f"invalid name {name!r}")


def check_mode(mode: int, needs_type: bool) -> None:
    """A mode: permission bits and, besides them, nothing but one of the seven file types (or
    no type at all, where `needs_type` is false: a chmod's mode keeps the file's type)."""
    if not 0 <= mode <= MAX_MODE:
        raise FsError(errno.EINVAL, f"mode {mode:#o} out of range")
    kind = stat.S_IFMT(mode)
    if kind not in FILE_TYPES and (needs_type or kind != 0):
        raise FsError(errno.EINVAL, f"mode {mode:#o} has no valid file type")


def check_size(size: int) -> None:
    if size < 0:
        raise FsError(errno.EINVAL, f"negative size {size}")
    if size > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, f"size {size} is over the largest file, {MAX_FILE_SIZE} bytes")


def check_symlink_target(target: bytes) -> None:
    if len(target) > MAX_SYMLINK_BYTES:
        raise FsError(errno.ENAMETOOLONG, f"symlink target of {len(target)} bytes, the limit is {MAX_SYMLINK_BYTES}")
    if not target or b"\0" in target:
        raise FsError(errno.EINVAL, "a symlink target is 1 or more bytes without NUL")


def check_xattr(name: bytes, value: bytes | None) -> None:
    """The kernel's limits: ERANGE for a name it would not pass, E2BIG for a value over 64 KiB."""
    if not name or len(name) > MAX_XATTR_NAME_BYTES or b"\0" in name:
        raise FsError(errno.ERANGE, f"attribute name must be 1 to {MAX_XATTR_NAME_BYTES} bytes without NUL")
    if value is not None and len(value) > MAX_XATTR_VALUE_BYTES:
        raise FsError(errno.E2BIG, f"attribute value over {MAX_XATTR_VALUE_BYTES} bytes")


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def check_server_address(address: str) -> None:
    """A chunkserver's address as it registers it, for clients and peers to connect to: HOST:PORT
    with a host name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535; EINVAL else
    (a registration with anything else would be handed to every client as a place to write to)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise FsError(errno.EINVAL, f"server address {address[:80]!r} is not HOST:PORT with a port 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return
        except ValueError:
            pass
    elif host.isascii() and _HOSTNAME.fullmatch(host):
        return  # a name, or an IPv4 address (digits and dots are a valid name too)
    raise FsError(errno.EINVAL, f"server address {address[:80]!r}: {host[:64]!r} is not a host name or IP address")


def is_token(value: str) -> bool:
    return TOKEN.fullmatch(value) is not None


def in_id_range(value: int) -> bool:
    return 1 <= value <= MAX_ID


_U32, _S64 = (0, 2**32 - 1), (-(2**63), 2**63 - 1)
_ATTR_RANGES = {"ino": (1, 2**64 - 1), "uid": _U32, "gid": _U32, "rdev": _U32, "nlink": _U32,
                "size": (0, _S64[1]), "blocks": (0, _S64[1]), "atime_ns": _S64, "mtime_ns": _S64,
                "ctime_ns": _S64}


def unrepresentable(attr: Attr) -> str | None:
    """Why the kernel could not take a file's attributes (an `Attr` stored before the servers
    checked their input), or None if it can. A client refuses such a file alone (EIO), so one
    bad entry cannot fail a whole listing or end a mount with an OverflowError."""
    for name, (low, high) in _ATTR_RANGES.items():
        value: int = getattr(attr, name)
        if not low <= value <= high:
            return f"{name} {value} is out of range"
    if not 0 <= attr.mode <= MAX_MODE or stat.S_IFMT(attr.mode) not in FILE_TYPES:
        return f"mode {attr.mode:#o} is not a valid file mode"
    return None
