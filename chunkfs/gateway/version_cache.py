"""What the gateway worked out about a file, kept for as long as the file is that same version.

An object's description (ETag, content type, metadata, checksums: its `user.s3.*` xattrs) costs a
listxattr and a getxattr per xattr, one metaserver round trip each; an S3 client's parallel
ranged GETs of one object (awscli: 8 MiB parts, 10 at once) would pay them for every part. A
version is the file's inode, size, mtime and ctime as a stat gives them: every change of content,
xattrs, mode, owner or ACL sets the ctime (the metaserver stamps it in the transaction), so while
the stat still says the same version the description read for it holds. Kept per caller (the
read of the xattrs was that caller's permission check), bounded in entries, the oldest dropped.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Generic, TypeVar

MAX_VERSIONS = 4096

T = TypeVar("T")
Version = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def version_of(st: os.stat_result) -> Version:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class VersionCache(Generic[T]):
    """Values by file version, the least recently used dropped past `max_versions`."""

    def __init__(self, max_versions: int = MAX_VERSIONS) -> None:
        self._values: OrderedDict[Version, T] = OrderedDict()
        self.max_versions = max_versions

    def get(self, st: os.stat_result) -> T | None:
        version = version_of(st)
        value = self._values.get(version)
        if value is not None:
            self._values.move_to_end(version)
        return value

    def put(self, st: os.stat_result, value: T) -> None:
        self._values[version_of(st)] = value
        self._values.move_to_end(version_of(st))
        while len(self._values) > self.max_versions:
            self._values.popitem(last=False)
