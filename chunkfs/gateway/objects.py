"""Buckets and objects on the namespace, as one caller sees them (the S3 door's model).

A bucket is a directory at the root; an object's key is a path below it: `photos/2024/a.jpg`
in bucket `b` is the file /b/photos/2024/a.jpg that every mount shows. A key ending in `/` is
a directory (a "folder" made by a client). Writing a key makes its directories; deleting the
last key below a directory removes the directories it leaves empty (up to the bucket), so a
prefix disappears with its last object as it does in S3.

What S3 has and a file does not is kept in the file's xattrs, visible on the mount too:
`user.s3.etag` (the MD5 of the body, with the size and mtime it belongs to: a file changed
later through the mount no longer matches and gets an ETag made from its inode, size and mtime
instead, marked as not an MD5 by a `-1` suffix), `user.s3.content-type`, `user.s3.meta.NAME`,
the other headers S3 stores with an object (`user.s3.header.cache-control`, ... STORED_HEADERS)
and, on an object a multipart upload made, the upload's id (`user.s3.upload-id`: a Complete
sent again is answered as the first was).

An object appears only when its PUT completed: bodies are written under a temporary name and
renamed into place (`chunkfs.client.transfers.staged_file`), and listings skip those names.
Every call is made with the caller's identity, so the namespace's permissions (mode bits and
ACLs, as the client core checks them) decide; errors are the core's OSErrors.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from chunkfs import INLINE_MAX_BYTES
from chunkfs.client import AsyncFile, AsyncFilesystem, DirEntry
from chunkfs.client.os_errors import os_error
from chunkfs.client.transfers import is_staged_name, staged_file, store_small
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.listing_cache import DirectorySnapshots
from chunkfs.gateway.streams import read_body, read_if_small, write_body
from chunkfs.gateway.version_cache import VersionCache

XATTR_ETAG = "user.s3.etag"
XATTR_CONTENT_TYPE = "user.s3.content-type"
XATTR_META = "user.s3.meta."
XATTR_CHECKSUM = "user.s3.checksum."
XATTR_HEADER = "user.s3.header."
XATTR_UPLOAD_ID = "user.s3.upload-id"
XATTR_PART_SIZES = "user.s3.part-sizes"  # of an object a multipart upload made: its parts' sizes, for GET ?partNumber
XATTR_TAGGING = "user.s3.tagging"  # tagging.py's stored form
TAGGING_HEADER = "x-amz-tagging"  # in a request's headers (StoredHeaders), already in tagging.py's stored form
# the request headers S3 keeps with an object and answers its GETs and HEADs with
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
MAX_KEY_BYTES = 1024
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


class InvalidName(ValueError):
    """A bucket name or key that cannot name anything here (`too_long` for a key past 1,024 bytes)."""

    def __init__(self, message: str, too_long: bool = False) -> None:
        super().__init__(message)
        self.too_long = too_long


@dataclass
class ObjectInfo:
    key: str
    size: int
    mtime_ns: int
    etag: str  # without the quotes
    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64, those checked at upload
    headers: dict[str, str] = field(default_factory=dict)  # STORED_HEADERS given at upload
    uid: int = 0
    upload_id: str = ""  # the multipart upload that made it
    part_sizes: list[int] = field(default_factory=list)  # the sizes of that upload's parts
    tags: str = ""  # tagging.py's stored form


class ListedObject(NamedTuple):
    """An object as a listing shows it (a tuple: a page makes a thousand of them)."""

    key: str
    size: int
    mtime_ns: int
    etag: str  # without the quotes
    uid: int = 0


@dataclass
class ListPage:
    objects: list[ListedObject]
    prefixes: list[str]
    truncated: bool
    last: str  # the last key or prefix in the page: where the next page starts after


class StoredHeaders(NamedTuple):
    """What a request says about the object it makes: content type, user metadata (x-amz-meta-*)
    and the other STORED_HEADERS."""

    content_type: str | None
    metadata: dict[str, str]
    headers: dict[str, str]


def check_bucket_name(name: str) -> None:
    if not BUCKET_NAME.match(name) or ".." in name or ".-" in name or "-." in name or IP_ADDRESS.match(name):
        raise InvalidName(f"bucket name {name!r}: 3-63 characters, lower-case letters, digits, '.' and '-'")


def check_key(key: str) -> None:
    if not key:
        raise InvalidName("an empty key")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidName("the key is longer than 1,024 bytes", too_long=True)
    names = key.rstrip("/").split("/")
    if "\0" in key or key.startswith("/") or any(n in ("", ".", "..") for n in names):
        raise InvalidName(f"key {key!r}: no NUL, no empty, '.' or '..' part, no leading '/'")


def _fallback_etag(ino: int, size: int, mtime_ns: int) -> str:
    return hashlib.md5(f"{ino}:{size}:{mtime_ns}".encode()).hexdigest() + "-1"


def _etag_from(stored: bytes | None, ino: int, size: int, mtime_ns: int) -> str:
    if stored:
        md5, _, belongs_to = stored.partition(b" ")
        if belongs_to == b"%d %d" % (size, mtime_ns):
            return md5.decode()
    return _fallback_etag(ino, size, mtime_ns)


async def make_directories(afs: AsyncFilesystem, path: str) -> None:
    """`path` and the directories above it, those missing made (only those: a caller may write
    in a directory it could not have made)."""
    try:
        if stat.S_ISDIR((await afs.stat(path)).st_mode):
            return
        raise FileExistsError(errno.EEXIST, f"{path} is a file, so it cannot hold other files or keys", path)
    except FileNotFoundError:
        pass
    await make_directories(afs, path.rsplit("/", 1)[0] or "/")
    with contextlib.suppress(FileExistsError):  # made meanwhile by another request
        await afs.mkdir(path)


def object_xattrs(etag: str, size: int, mtime_ns: int, content_type: str | None, metadata: dict[str, str] | None,
                  checksums: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> dict[str, str]:
    """The xattrs that describe an object: its ETag (valid for this size and mtime: a change
    through a mount makes it stale), user metadata, verified checksums, content type and the
    other stored headers."""
    values = {XATTR_ETAG: f"{etag} {size} {mtime_ns}",
              **{XATTR_META + k.lower(): v for k, v in (metadata or {}).items()},
              **{XATTR_CHECKSUM + k: v for k, v in (checksums or {}).items()},
              **{XATTR_HEADER + k: v for k, v in (headers or {}).items() if k in STORED_HEADERS}}
    if (headers or {}).get(TAGGING_HEADER):
        values[XATTR_TAGGING] = (headers or {})[TAGGING_HEADER]
    if content_type:
        values[XATTR_CONTENT_TYPE] = content_type
    return values


@dataclass(frozen=True)
class StoredFile:
    size: int
    mtime_ns: int
    etag: str  # the body's MD5 (hex) unless the caller chose it


async def store_file(afs: AsyncFilesystem, path: str, body: AsyncIterator[bytes], checksums: BodyChecksums,
                     exclusive: bool = False, content_type: str | None = None,
                     metadata: dict[str, str] | None = None, etag: str | None = None,
                     headers: dict[str, str] | None = None) -> StoredFile:
    """Write `body` as the file `path` (its directory must exist), atomically: the name shows
    the new file only once every byte is durable and every checksum held; with its ETag (the
    body's MD5 unless `etag` is given), content type and metadata in its xattrs, set in the same
    commit. A body small enough to be kept inline is stored in one metaserver call
    (`store_small`), a larger one through a staged file."""
    pieces = aiter(body)
    try:
        head, complete = await read_if_small(pieces, INLINE_MAX_BYTES)
        if complete:
            checksums.update(head)
            body_etag = etag or checksums.finish()
            mtime_ns = time.time_ns()
            values = object_xattrs(body_etag, len(head), mtime_ns, content_type, metadata, checksums.verified, headers)
            if await store_small(afs, path, head, _encoded(values), mtime_ns, exclusive):
                return StoredFile(len(head), mtime_ns, body_etag)
        async with staged_file(afs, path, exclusive) as afile:
            if complete:
                size = await afile.write(head)
            else:
                size = await write_body(afile, _replayed(head, pieces), checksums.update)
                body_etag = etag or checksums.finish()
            mtime_ns = afile.mtime_ns  # what the commit stamps the file with, so the ETag's is known now
            values = object_xattrs(body_etag, size, mtime_ns, content_type, metadata, checksums.verified, headers)
            # committed with its xattrs, in one call (on a file this caller just made, its owner)
            await afile.flush_with_xattrs(_encoded(values))
    except (FsError, TransportError) as exc:  # the core's own errors, from the calls made by inode
        raise os_error(exc, path) from None
    return StoredFile(size, mtime_ns, body_etag)


def _encoded(values: dict[str, str]) -> dict[str, bytes]:
    return {name: value.encode() for name, value in values.items()}


async def _replayed(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The pieces of a body whose first bytes, `head`, were read already."""
    yield head
    async for piece in rest:
        yield piece


async def describe_file(afs: AsyncFilesystem, path: str, key: str, st: os.stat_result) -> ObjectInfo:
    """The object `path` is (`st`: its stat), with what its xattrs say."""
    fallback = _fallback_etag(st.st_ino, st.st_size, st.st_mtime_ns)
    info = ObjectInfo(key, st.st_size, st.st_mtime_ns, fallback, uid=st.st_uid)
    for name in await afs.listxattr(path):
        if not name.startswith("user.s3."):
            continue
        value = await afs.getxattr(path, name)
        if name == XATTR_ETAG:
            info.etag = _etag_from(value, st.st_ino, st.st_size, st.st_mtime_ns)
        elif name == XATTR_CONTENT_TYPE:
            info.content_type = value.decode(errors="replace")
        elif name.startswith(XATTR_META):
            info.metadata[name[len(XATTR_META):]] = value.decode(errors="replace")
        elif name.startswith(XATTR_CHECKSUM):
            info.checksums[name[len(XATTR_CHECKSUM):]] = value.decode(errors="replace")
        elif name.startswith(XATTR_HEADER):
            info.headers[name[len(XATTR_HEADER):]] = value.decode(errors="replace")
        elif name == XATTR_UPLOAD_ID:
            info.upload_id = value.decode(errors="replace")
        elif name == XATTR_PART_SIZES:
            info.part_sizes = [int(n) for n in value.split() if n.isdigit()]
        elif name == XATTR_TAGGING:
            info.tags = value.decode(errors="replace")
    if info.etag == fallback:  # its content changed since its PUT (through a mount): so did its checksums
        info.checksums = {}
    return info


class ObjectStore:
    """Buckets and objects as the identity of `afs` sees them."""

    def __init__(self, afs: AsyncFilesystem, snapshots: DirectorySnapshots | None = None,
                 descriptions: VersionCache[ObjectInfo] | None = None) -> None:
        """`snapshots` and `descriptions` (the objects read before, by version) are the caller's,
        kept from one request to the next."""
        self.afs = afs
        self.snapshots = snapshots or DirectorySnapshots(XATTR_ETAG)
        self.descriptions: VersionCache[ObjectInfo] = descriptions or VersionCache()

    # ---- buckets ---------------------------------------------------------------------------------
    async def list_buckets(self) -> list[tuple[str, int]]:
        """(name, ctime_ns) of every directory at the root."""
        return sorted((e.name, e.stat().st_ctime_ns) for e in await self.afs.scandir("/")
                      if e.is_dir() and not e.name.startswith("."))

    async def bucket_owner(self, bucket: str) -> int | None:
        """The uid that owns the bucket, None if there is no such bucket."""
        try:
            st = await self.afs.stat(f"/{bucket}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_uid if stat.S_ISDIR(st.st_mode) else None

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            st = await self.afs.stat(f"/{bucket}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISDIR(st.st_mode)

    async def create_bucket(self, bucket: str) -> None:
        check_bucket_name(bucket)
        await self.afs.mkdir(f"/{bucket}")

    async def delete_bucket(self, bucket: str) -> None:
        entries = [e for e in await self.afs.scandir(f"/{bucket}")]
        if any(not is_staged_name(os.fsencode(e.name)) for e in entries):
            raise OSError(errno.ENOTEMPTY, "the bucket you tried to delete is not empty")
        await self.afs.rmdir(f"/{bucket}")

    # ---- objects ----------------------------------------------------------------------------------
    @staticmethod
    def path(bucket: str, key: str) -> str:
        check_key(key)
        return f"/{bucket}/{key.rstrip('/')}"

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        path = self.path(bucket, key)
        st = await self.afs.stat(path)
        if stat.S_ISDIR(st.st_mode) != key.endswith("/"):
            raise FileNotFoundError(errno.ENOENT, "no such key", key)
        if stat.S_ISDIR(st.st_mode):
            return ObjectInfo(key, 0, st.st_mtime_ns, EMPTY_MD5)
        described = self.descriptions.get(st)  # shared between requests: never changed once kept
        if described is None:
            described = await describe_file(self.afs, path, key, st)
            self.descriptions.put(st, described)
        return described if described.key == key else dataclasses.replace(described, key=key)

    async def open(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncFile]:
        """The object's description and the file open for reading (the caller closes it)."""
        info = await self.head(bucket, key)
        if key.endswith("/"):
            raise FileNotFoundError(errno.ENOENT, "a directory has no body", key)
        afile = await self.afs.open(self.path(bucket, key), "rb")
        return info, afile

    async def put(self, bucket: str, key: str, body: AsyncIterator[bytes], checksums: BodyChecksums,
                  content_type: str | None, metadata: dict[str, str], exclusive: bool = False,
                  etag: str | None = None, headers: dict[str, str] | None = None) -> ObjectInfo:
        """Store `body` as the object, visible only once complete and checked."""
        path = self.path(bucket, key)
        if not await self.bucket_exists(bucket):
            raise FileNotFoundError(errno.ENOENT, "no such bucket", bucket)
        parent = path.rsplit("/", 1)[0]
        if key.endswith("/"):
            async for piece in body:
                checksums.update(piece)
            checksums.finish()
            await make_directories(self.afs, path)
            return ObjectInfo(key, 0, 0, EMPTY_MD5)
        if parent != f"/{bucket}":  # the bucket itself was just found to be a directory
            await make_directories(self.afs, parent)
        try:
            stored = await store_file(self.afs, path, body, checksums, exclusive, content_type, metadata, etag, headers)
        except IsADirectoryError:  # a key that other keys are under: S3 allows both, a filesystem cannot
            raise FileExistsError(errno.EEXIST, f"{key} is a prefix of other keys (a directory)", key) from None
        return ObjectInfo(key, stored.size, stored.mtime_ns, stored.etag, content_type or DEFAULT_CONTENT_TYPE, metadata,
                          dict(checksums.verified), dict(headers or {}))

    async def copy(self, source: tuple[str, str], bucket: str, key: str, replace: StoredHeaders | None,
                   check: Callable[[ObjectInfo], None] = lambda info: None) -> ObjectInfo:
        """Copy an object (its content type, metadata and stored headers too, unless `replace`
        gives new ones), if `check` raises nothing about the source."""
        info, afile = await self.open(*source)
        try:
            check(info)
        except BaseException:
            await afile.aclose()
            raise
        copied = {**info.headers, **({TAGGING_HEADER: info.tags} if info.tags else {})}
        content_type, metadata, headers = replace or (info.content_type, info.metadata, copied)
        return await self.put(bucket, key, read_body(afile, None), BodyChecksums({}), content_type, metadata,
                              headers=headers)

    async def set_tags(self, bucket: str, key: str, stored: str) -> None:
        """Replace the object's tags (tagging.py's stored form; "" removes them)."""
        info = await self.head(bucket, key)
        path = self.path(bucket, key)
        if stored:
            await self.afs.setxattr(path, XATTR_TAGGING, stored.encode())
        elif info.tags:
            await self.afs.removexattr(path, XATTR_TAGGING)

    async def delete(self, bucket: str, key: str, check: Callable[[ObjectInfo], None] | None = None) -> None:
        """Remove the object (nothing to do if it is not there), then the directories it leaves
        empty; with `check`, only if it raises nothing about the object there (looked at just
        before: a change between the two is not seen)."""
        path = self.path(bucket, key)
        if check is not None:
            try:
                check(await self.head(bucket, key))
            except (FileNotFoundError, NotADirectoryError):
                if not await self.bucket_exists(bucket):
                    raise
                return
        try:
            if key.endswith("/"):
                await self.afs.rmdir(path)
            else:
                await self.afs.remove(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if not await self.bucket_exists(bucket):
                raise
            return
        parts = key.rstrip("/").split("/")[:-1]
        while parts:
            try:
                await self.afs.rmdir(f"/{bucket}/{'/'.join(parts)}")
            except OSError:
                return
            parts.pop()

    # ---- listing -----------------------------------------------------------------------------------
    async def list(self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int) -> ListPage:
        """Keys in UTF-8 byte order (as S3 sorts them), from just after `after`."""
        if not await self.bucket_exists(bucket):
            raise FileNotFoundError(errno.ENOENT, "no such bucket", bucket)
        page = ListPage([], [], False, "")
        if max_keys <= 0:
            return page
        async for key, entry in self._keys(bucket, "", prefix, delimiter, after):
            rest = key[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            common = prefix + rest[: cut + len(delimiter)] if cut >= 0 else None
            if common is not None and (common <= after or common == page.last):
                continue
            if len(page.objects) + len(page.prefixes) == max_keys:
                page.truncated = True
                break
            if common is not None:
                page.prefixes.append(common)
                page.last = common
            else:
                page.objects.append(self._listed(key, entry))
                page.last = key
        return page

    @staticmethod
    def _listed(key: str, entry: DirEntry | None) -> ListedObject:
        if entry is None or entry.is_dir():
            return ListedObject(key, 0, entry.attr.mtime_ns if entry else 0, EMPTY_MD5, entry.attr.uid if entry else 0)
        attr = entry.attr  # the ETag came with the listing (DirectorySnapshots' with_xattr): no call per key
        return ListedObject(key, attr.size, attr.mtime_ns, _etag_from(entry.xattr, attr.ino, attr.size, attr.mtime_ns),
                            attr.uid)

    async def _keys(self, bucket: str, dir_key: str, prefix: str, delimiter: str, after: str
                    ) -> AsyncIterator[tuple[str, DirEntry | None]]:
        """(key, entry) below `dir_key` in key order, pruned to what can match `prefix` and come
        after `after`; a directory a "/" delimiter folds into a common prefix is not entered."""
        try:
            named = await self.snapshots.sorted_entries(self.afs, f"/{bucket}/{dir_key}")
        except PermissionError:
            if not dir_key:
                raise
            return
        if after.startswith(dir_key):  # skip what sorts before `after` (the checks below decide)
            named = named[bisect.bisect_left(named, (after[len(dir_key):].split("/")[0],)):]
        for name, entry in named:
            key = dir_key + name
            if not (key.startswith(prefix) or (entry.is_dir() and prefix.startswith(key))):
                continue
            if entry.is_dir():
                if after > key and not after.startswith(key):
                    continue  # every key below it sorts before `after`
                if delimiter == "/" and key.startswith(prefix) and len(key) > len(prefix):
                    yield key, entry  # folded into a common prefix by the caller
                    continue
                empty = True
                async for below in self._keys(bucket, key, prefix, delimiter, after):
                    empty = False
                    yield below
                if empty and key.startswith(prefix) and key > after:
                    yield key, entry
            elif key > after:
                yield key, entry
