"""Cluster paths as the Python API takes them: checked before any call is made.

A path is absolute from the cluster's root ("/a/b"); a relative one is taken from the root too.
`.` and empty parts are dropped and `..` goes up one level, lexically (as fsspec and URLs do),
so `/a/../b` is `/b`; a `..` past the root, a NUL byte or a name over 255 bytes is refused with
EINVAL or ENAMETOOLONG, the errno the kernel would give, before anything reaches a server.
"""

from __future__ import annotations

import errno
import os

from chunkfs import MAX_NAME_BYTES
from chunkfs.errors import FsError

PathLike = str | bytes | os.PathLike[str]


def split_path(path: PathLike) -> list[bytes]:
    """The names from the root to `path` ([] for the root itself)."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise FsError(errno.EINVAL, f"{raw!r}: a path cannot hold a NUL byte")
    names: list[bytes] = []
    for name in raw.split(b"/"):
        if name in (b"", b"."):
            continue
        if name == b"..":
            if not names:
                raise FsError(errno.EINVAL, f"{os.fsdecode(raw)}: '..' goes above the root")
            names.pop()
            continue
        if len(name) > MAX_NAME_BYTES:
            raise FsError(errno.ENAMETOOLONG, f"{os.fsdecode(raw)}: a name is longer than {MAX_NAME_BYTES} bytes")
        names.append(name)
    return names


def join(names: list[bytes]) -> str:
    """The canonical form of a path: "/" and the names."""
    return "/" + os.fsdecode(b"/".join(names))
