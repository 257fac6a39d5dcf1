"""S3 multipart uploads, kept in the namespace until completed.

An upload is a directory `/.chunkfs-uploads/UPLOAD_ID/` (the parent is made once, 1777 like
/tmp, so every key's uploads are its own and only theirs), made by the caller, with the target
(bucket, key, content type, metadata) in its `user.s3.upload` xattr and each part stored as a
file `part-NNNNN` the way an object is (atomically, its MD5 in its ETag xattr). So an upload
survives a gateway restart and shows nothing under its key until Complete. An upload untouched
for `upload_expiry_s` (24 h by default) is removed by the gateway (`collect_abandoned`). Complete checks
the list (ascending part numbers, each part there with that ETag, every part but the last at
least 5 MiB), then writes the parts in order as the object (`ObjectStore.put`: atomic, as a
rename) with the `md5-of-md5s-N` ETag S3 clients expect, and removes the upload.

What this first version costs: Complete copies the parts' bytes once more (read back, written
as the object); the upload-session mechanism of issue 16 (parts recorded as chunks by the
metaserver, committed without a copy, collected when abandoned) replaces it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from chunkfs.client import AsyncFilesystem
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.objects import XATTR_ETAG, ObjectInfo, ObjectStore, check_key, store_file
from chunkfs.gateway.s3_errors import S3Error

log = logging.getLogger(__name__)

UPLOADS_DIR = "/.chunkfs-uploads"
XATTR_UPLOAD = "user.s3.upload"
MAX_PART_NUMBER = 10_000
MIN_PART_BYTES = 5 << 20


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    content_type: str | None
    metadata: dict[str, str]
    initiated_ns: int = 0


@dataclass
class Part:
    number: int
    etag: str
    size: int
    mtime_ns: int


def _part_name(number: int) -> str:
    return f"part-{number:05d}"


def _no_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the upload "
                                   "may have been aborted or completed.", upload_id)


async def ensure_uploads_dir(root: AsyncFilesystem) -> None:
    """/.chunkfs-uploads, made by root, writable by all and sticky (each removes only its own)."""
    if not await root.exists(UPLOADS_DIR):
        try:
            await root.mkdir(UPLOADS_DIR, 0o1777)
        except FileExistsError:
            return
        await root.chmod(UPLOADS_DIR, 0o1777)


async def collect_abandoned(root: AsyncFilesystem, expiry_s: float) -> int:
    """Remove the uploads (multipart and tus) untouched for `expiry_s`; how many went. An
    upload's directory or file changes with every part or PATCH, so its mtime is its last use."""
    if not await root.exists(UPLOADS_DIR):
        return 0
    cutoff_ns = time.time_ns() - int(expiry_s * 1e9)
    removed = 0
    for entry in await root.scandir(UPLOADS_DIR):
        if entry.stat().st_mtime_ns > cutoff_ns:
            continue
        try:
            if entry.is_dir():
                for part in await root.scandir(entry.path):
                    await root.remove(part.path)
                await root.rmdir(entry.path)
            else:
                await root.remove(entry.path)
            removed += 1
        except FileNotFoundError:  # completed or aborted meanwhile
            continue
    return removed


async def collect_abandoned_forever(root: AsyncFilesystem, expiry_s: float) -> None:
    """Every quarter of `expiry_s` (at most hourly), `collect_abandoned`; runs until cancelled."""
    while True:
        await trio.sleep(min(expiry_s / 4, 3600.0))
        try:
            removed = await collect_abandoned(root, expiry_s)
        except OSError as exc:  # the cluster away for a while: try again next round
            log.warning("collecting abandoned uploads: %s", exc)
            continue
        if removed:
            log.info("removed %d upload(s) abandoned for more than %g s", removed, expiry_s)


class MultipartUploads:
    """The uploads as one caller sees them (`objects` is that caller's ObjectStore)."""

    def __init__(self, objects: ObjectStore, root: AsyncFilesystem) -> None:
        self.objects, self.afs, self.root = objects, objects.afs, root

    async def create(self, bucket: str, key: str, content_type: str | None, metadata: dict[str, str]) -> str:
        check_key(key)
        if not await self.objects.bucket_exists(bucket):
            raise FileNotFoundError(errno.ENOENT, "no such bucket", bucket)
        await ensure_uploads_dir(self.root)
        upload_id = secrets.token_hex(16)
        path = f"{UPLOADS_DIR}/{upload_id}"
        await self.afs.mkdir(path, 0o700)
        record = {"bucket": bucket, "key": key, "content_type": content_type, "metadata": metadata}
        await self.afs.setxattr(path, XATTR_UPLOAD, json.dumps(record).encode())
        return upload_id

    async def get(self, bucket: str, key: str, upload_id: str) -> Upload:
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise _no_upload(upload_id)
        path = f"{UPLOADS_DIR}/{upload_id}"
        try:
            record = json.loads(await self.afs.getxattr(path, XATTR_UPLOAD))
            initiated_ns = (await self.afs.stat(path)).st_ctime_ns
        except (FileNotFoundError, NotADirectoryError):
            raise _no_upload(upload_id) from None
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise _no_upload(upload_id) from None
            raise
        if (record["bucket"], record["key"]) != (bucket, key):
            raise _no_upload(upload_id)
        return Upload(upload_id, bucket, key, record["content_type"], record["metadata"], initiated_ns)

    async def put_part(self, upload: Upload, number: int, body: AsyncIterator[bytes], checksums: BodyChecksums) -> str:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")
        stored = await store_file(self.afs, f"{UPLOADS_DIR}/{upload.upload_id}/{_part_name(number)}", body, checksums)
        return stored.etag

    async def parts(self, upload: Upload) -> list[Part]:
        parts = []
        for entry in await self.afs.scandir(f"{UPLOADS_DIR}/{upload.upload_id}"):
            if not entry.name.startswith("part-") or not entry.is_file():
                continue
            stored = (await self.afs.getxattr(entry.path, XATTR_ETAG)).decode().split(" ")
            st = entry.stat()
            parts.append(Part(int(entry.name[5:]), stored[0], st.st_size, st.st_mtime_ns))
        return sorted(parts, key=lambda p: p.number)

    async def complete(self, upload: Upload, asked: list[tuple[int, str]]) -> ObjectInfo:
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
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest()
        info = await self.objects.put(upload.bucket, upload.key, self._concatenated(upload, chosen), BodyChecksums({}),
                                      upload.content_type, upload.metadata, etag=f"{digest}-{len(chosen)}")
        await self.abort(upload)
        return info

    async def _concatenated(self, upload: Upload, parts: list[Part]) -> AsyncIterator[bytes]:
        for part in parts:
            async with await self.afs.open(f"{UPLOADS_DIR}/{upload.upload_id}/{_part_name(part.number)}") as f:
                while data := await f.read(4 << 20):
                    yield data

    async def abort(self, upload: Upload) -> None:
        path = f"{UPLOADS_DIR}/{upload.upload_id}"
        for entry in await self.afs.scandir(path):
            await self.afs.remove(entry.path)
        await self.afs.rmdir(path)

    async def list(self, bucket: str, prefix: str) -> list[Upload]:
        """The uploads to `bucket` under `prefix` this caller can see."""
        if not await self.root.exists(UPLOADS_DIR):
            return []
        uploads = []
        for entry in await self.afs.scandir(UPLOADS_DIR):
            if not entry.is_dir() or not stat.S_IMODE(entry.stat().st_mode):
                continue
            try:
                record = json.loads(await self.afs.getxattr(entry.path, XATTR_UPLOAD))
            except (OSError, ValueError):
                continue
            if record["bucket"] == bucket and record["key"].startswith(prefix):
                uploads.append(Upload(entry.name, bucket, record["key"], record["content_type"], record["metadata"],
                                      entry.stat().st_ctime_ns))
        return sorted(uploads, key=lambda u: (u.key, u.initiated_ns))
