"""S3 multipart uploads: upload sessions of the client core (`chunkfs/client/upload_sessions.py`).

An upload is a session whose record (its `user.chunkfs.session` xattr) is the target (bucket,
key, content type, metadata), each part stored whole as the session's file `part-NNNNN` the way
an object is (its MD5 in its ETag xattr). So an upload survives a gateway restart and shows
nothing under its key until Complete; one untouched for `upload_expiry_s` (24 h by default) is
removed by the gateway (`collect_abandoned_forever`). Complete checks the list (ascending part
numbers, each part there with that ETag, every part but the last at least 5 MiB), then commits
the session into the key: the parts' chunks become the object's without a copy where the part
boundaries fall on chunk boundaries (8 MiB parts: all of them), see `upload_sessions.py` for
what is copied otherwise; the object gets the `md5-of-md5s-N` ETag S3 clients expect, and the upload's id in an xattr: a
Complete sent again (a client that did not hear the answer) gets the same answer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from chunkfs.client import AsyncFilesystem
from chunkfs.client.upload_sessions import StoredPart, UploadSessions, part_path
from chunkfs.errors import FsError
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.objects import (DEFAULT_CONTENT_TYPE, XATTR_ETAG, XATTR_PART_SIZES, XATTR_UPLOAD_ID, ObjectInfo,
                                     ObjectStore, StoredHeaders, check_key, make_directories, object_xattrs,
                                     store_file)
from chunkfs.gateway.s3_errors import S3Error

log = logging.getLogger(__name__)

MAX_PART_NUMBER = 10_000  # S3's; the sessions take up to 99,999
MIN_PART_BYTES = 5 << 20


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    content_type: str | None
    metadata: dict[str, str]
    initiated_ns: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # the other stored headers (objects.STORED_HEADERS)


@dataclass
class Part:
    number: int
    etag: str
    size: int
    mtime_ns: int
    stored: StoredPart


def _no_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the upload "
                                   "may have been aborted or completed.", upload_id)


def _upload_of(upload_id: str, raw: bytes, initiated_ns: int) -> Upload | None:
    """The multipart upload a session record describes (None: the session is another door's)."""
    try:
        record = json.loads(raw)
        return Upload(upload_id, record["bucket"], record["key"], record["content_type"], record["metadata"],
                      initiated_ns, record.get("headers", {}))
    except (ValueError, KeyError, TypeError):
        return None


class MultipartUploads:
    """The uploads as one caller sees them (`objects` is that caller's ObjectStore)."""

    def __init__(self, objects: ObjectStore, root: AsyncFilesystem) -> None:
        self.objects, self.afs = objects, objects.afs
        self.sessions = UploadSessions(objects.afs, root)

    async def create(self, bucket: str, key: str, described: StoredHeaders) -> str:
        check_key(key)
        if not await self.objects.bucket_exists(bucket):
            raise FileNotFoundError(errno.ENOENT, "no such bucket", bucket)
        record = {"bucket": bucket, "key": key, "content_type": described.content_type,
                  "metadata": described.metadata, "headers": described.headers}
        return await self.sessions.create(json.dumps(record).encode())

    async def get(self, bucket: str, key: str, upload_id: str) -> Upload:
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise _no_upload(upload_id)
        try:
            raw, st = await self.sessions.record(upload_id)
        except FileNotFoundError:
            raise _no_upload(upload_id) from None
        upload = _upload_of(upload_id, raw, st.st_ctime_ns)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise _no_upload(upload_id)
        return upload

    async def put_part(self, upload: Upload, number: int, body: AsyncIterator[bytes], checksums: BodyChecksums) -> str:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")
        stored = await store_file(self.afs, part_path(upload.upload_id, number), body, checksums)
        return stored.etag

    async def parts(self, upload: Upload) -> list[Part]:
        parts = []
        for number, stored in sorted((await self.sessions.parts(upload.upload_id)).items()):
            etag = (await self.afs.getxattr(stored.path, XATTR_ETAG)).decode().split(" ")[0]
            parts.append(Part(number, etag, stored.size, stored.mtime_ns, stored))
        return parts

    async def completed(self, bucket: str, key: str, upload_id: str) -> ObjectInfo | None:
        """The object this upload made, if it was completed (and the object not replaced since)."""
        try:
            info = await self.objects.head(bucket, key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info if upload_id and info.upload_id == upload_id else None

    async def complete(self, upload: Upload, asked: list[tuple[int, str]], exclusive: bool = False) -> ObjectInfo:
        """Commit the upload into its key (`exclusive`: only if no object is there, If-None-Match: *;
        checked before the commit, not with it)."""
        if not asked:
            raise S3Error("MalformedXML", "You must specify at least one part")
        numbers = [n for n, _ in asked]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order")
        have = {p.number: p for p in await self.parts(upload)}
        chosen = []
        for number, etag in asked:
            part = have.get(number)
            if part is None or part.etag != etag.strip('"'):
                raise S3Error("InvalidPart", f"One or more of the specified parts could not be found: part {number}")
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_BYTES:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size")
        etag = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest() + f"-{len(chosen)}"
        path = self.objects.path(upload.bucket, upload.key)
        if not await self.objects.bucket_exists(upload.bucket):
            raise FileNotFoundError(errno.ENOENT, "no such bucket", upload.bucket)
        if exclusive:
            try:
                await self.objects.head(upload.bucket, upload.key)
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        await make_directories(self.afs, path.rsplit("/", 1)[0])
        try:
            async with self.sessions.assembled(upload.upload_id, [p.stored for p in chosen], path) as done:
                xattrs = object_xattrs(etag, done.size, done.mtime_ns, upload.content_type, upload.metadata,
                                       headers=upload.headers)
                sizes = " ".join(str(p.size) for p in chosen)
                for name, value in {**xattrs, XATTR_UPLOAD_ID: upload.upload_id, XATTR_PART_SIZES: sizes}.items():
                    await self.afs.client.setxattr(done.ino, name.encode(), value.encode())
        except FsError as exc:
            if exc.errno == errno.EISDIR:  # a key other keys are under: S3 allows both, a filesystem cannot
                raise FileExistsError(errno.EEXIST, f"{upload.key} is a prefix of other keys", upload.key) from None
            raise
        if done.copied_bytes:
            log.info("multipart upload %s: %d of %d parts linked, %d bytes copied (parts not whole chunks)",
                     upload.upload_id, done.linked_parts, len(chosen), done.copied_bytes)
        await self.abort(upload)
        return ObjectInfo(upload.key, done.size, done.mtime_ns, etag, upload.content_type or DEFAULT_CONTENT_TYPE,
                          upload.metadata, headers=dict(upload.headers), upload_id=upload.upload_id,
                          part_sizes=[p.size for p in chosen])

    async def abort(self, upload: Upload) -> None:
        await self.sessions.remove(upload.upload_id)

    async def list(self, bucket: str, prefix: str) -> list[Upload]:
        """The uploads to `bucket` under `prefix` this caller can see."""
        uploads = []
        for session_id, raw, st in await self.sessions.listing():
            upload = _upload_of(session_id, raw, st.st_ctime_ns)
            if upload is not None and upload.bucket == bucket and upload.key.startswith(prefix):
                uploads.append(upload)
        return sorted(uploads, key=lambda u: (u.key, u.initiated_ns))
