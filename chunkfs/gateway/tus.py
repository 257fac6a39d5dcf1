"""Resumable uploads by the tus 1.0 protocol, at /api/v1/uploads/ (core, creation,
creation-with-upload, termination, checksum, expiration).

An upload is a file `/.chunkfs-uploads/tus-ID` in the namespace (beside the upload sessions of
`chunkfs/client/upload_sessions.py`, collected with them), made by the caller, with its target
path and length in its `user.tus.upload` xattr. Each PATCH appends to it and closes it
(durable), so the offset a HEAD reports is what is stored, also after the client, or the
gateway, went away mid-PATCH: the client resumes from there. When the offset reaches the
length the file is renamed onto its target (the directories made): it appears whole or not at
all, and its chunks are the ones the PATCHes stored (no copy).

The target is the upload's `path` metadata (`Upload-Metadata: path BASE64`), a path in the
namespace. Checksum: a PATCH with `Upload-Checksum: ALGORITHM BASE64` (md5, sha1, sha256,
crc32, crc32c, crc64nvme) keeps its bytes only if they match: a mismatch is answered 460 and a
body cut short is dropped whole (it cannot be checked), the offset staying where it was.
Expiration: an unfinished upload expires `upload_expiry_s` after its last PATCH (its creation),
told in `Upload-Expires`; after that it is answered 410 Gone and removed by the collection of
abandoned uploads.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import errno
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from chunkfs.client import AsyncFilesystem
from chunkfs.client.upload_sessions import SESSIONS_DIR, ensure_sessions_dir
from chunkfs.gateway.checksums import TUS_ALGORITHMS
from chunkfs.gateway.objects import make_directories

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
CHECKSUM_MISMATCH = 460  # tus's own status for a PATCH whose Upload-Checksum did not hold
MAX_SIZE = 5 << 40
XATTR_TUS = "user.tus.upload"
OFFSET_OCTETS = "application/offset+octet-stream"


RouteWrapper = Callable[[str, Callable[[Request, AsyncFilesystem], Awaitable[Response]]],
                        Callable[[Request], Awaitable[Response]]]


class TusError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(extra or {})}


def _metadata(header: str) -> dict[str, str]:
    values = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        name, _, encoded = pair.partition(" ")
        try:
            values[name] = base64.b64decode(encoded, validate=True).decode() if encoded else ""
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(400, f"Upload-Metadata {name}: not base64 of UTF-8") from None
    return values


def _number(request: Request, header: str) -> int:
    try:
        value = int(request.headers[header])
    except (KeyError, ValueError):
        raise TusError(400, f"{header} must be a non-negative integer") from None
    if value < 0:
        raise TusError(400, f"{header} must be a non-negative integer")
    return value


class _RunningPatch:
    """A PATCH of one upload in this gateway: held while it runs; `receiving` while its body
    still arrives. Another PATCH is refused with 409 while one receives (as tusd does), but
    waits for one that is only being wound up (its client gone, the file being closed), as a
    HEAD does, so a client that resumes at once sees the offset the cut-off PATCH left."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.receiving = False


class TusUploads:
    """The routes of /api/v1/uploads/ (each handler gets the caller's view of the core)."""

    def __init__(self, root: AsyncFilesystem, expiry_s: float) -> None:
        self.root, self.expiry_s = root, expiry_s
        self._patches: dict[str, _RunningPatch] = {}  # one PATCH at a time per upload, in this gateway

    @staticmethod
    def _path(upload_id: str) -> str:
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise TusError(404, "no such upload")
        return f"{SESSIONS_DIR}/tus-{upload_id}"

    async def _record(self, afs: AsyncFilesystem, upload_id: str) -> tuple[dict[str, object], int]:
        """The upload's record and stored size; 404 if there is none, 410 once it expired."""
        path = self._path(upload_id)
        try:
            record = json.loads(await afs.getxattr(path, XATTR_TUS))
            st = await afs.stat(path)
            size = st.st_size
            if time.time() > self._expires_s(st.st_mtime_ns):
                raise TusError(410, "the upload expired")
        except FileNotFoundError:
            raise TusError(404, "no such upload") from None
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise TusError(404, "no such upload") from None
            raise
        return record, size

    def _expires_s(self, mtime_ns: int) -> float:
        return mtime_ns / 1e9 + self.expiry_s

    async def _expires(self, afs: AsyncFilesystem, upload_id: str) -> dict[str, str]:
        """The Upload-Expires header of an unfinished upload (none for one that just finished)."""
        try:
            mtime_ns = (await afs.stat(self._path(upload_id))).st_mtime_ns
        except FileNotFoundError:
            return {}
        return {"Upload-Expires": email.utils.formatdate(self._expires_s(mtime_ns), usegmt=True)}

    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers=_headers({
            "Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS, "Tus-Max-Size": str(MAX_SIZE),
            "Tus-Checksum-Algorithm": ",".join(TUS_ALGORITHMS)}))

    async def create(self, request: Request, afs: AsyncFilesystem) -> Response:
        length = _number(request, "upload-length")
        if length > MAX_SIZE:
            raise TusError(413, "Upload-Length is above Tus-Max-Size")
        target = _metadata(request.headers.get("upload-metadata", "")).get("path", "")
        if not target.startswith("/") or target.endswith("/"):
            raise TusError(400, "Upload-Metadata must give the target as `path` (an absolute file path)")
        await ensure_sessions_dir(self.root)
        upload_id = secrets.token_hex(16)
        path = self._path(upload_id)
        async with await afs.open(path, "xb"):
            pass
        await afs.setxattr(path, XATTR_TUS, json.dumps({"path": afs.canonical(target), "length": length}).encode())
        headers = {"Location": f"/api/v1/uploads/{upload_id}"}
        if request.headers.get("content-type") == OFFSET_OCTETS:
            offset = await self._append(afs, upload_id, 0, request)
            headers["Upload-Offset"] = str(offset)
        elif length == 0:
            await self._finish(afs, upload_id, 0)
        headers.update(await self._expires(afs, upload_id))
        return Response(status_code=201, headers=_headers(headers))

    async def head(self, request: Request, afs: AsyncFilesystem) -> Response:
        upload_id = request.path_params["upload_id"]
        running = self._patches.get(upload_id)
        if running is not None and not running.receiving:
            # a PATCH whose body ended (or was cut off) is being wound up: the offset it leaves,
            # so the resume a client sends next starts there; a PATCH still receiving is not
            # waited for, its progress shows as it goes
            async with running.lock:
                pass
        record, size = await self._record(afs, upload_id)
        return Response(headers=_headers({"Upload-Offset": str(size), "Upload-Length": str(record["length"]),
                                          **await self._expires(afs, upload_id)}))

    async def patch(self, request: Request, afs: AsyncFilesystem) -> Response:
        if request.headers.get("content-type") != OFFSET_OCTETS:
            raise TusError(415, f"a PATCH body is {OFFSET_OCTETS}")
        offset = _number(request, "upload-offset")
        upload_id = request.path_params["upload_id"]
        new_offset = await self._append(afs, upload_id, offset, request)
        return Response(status_code=204, headers=_headers({"Upload-Offset": str(new_offset),
                                                           **await self._expires(afs, upload_id)}))

    async def _append(self, afs: AsyncFilesystem, upload_id: str, offset: int, request: Request | None = None) -> int:
        """Write the body at `offset` (which must be the stored size) and close (durable);
        what arrived before a disconnect stays. Finishes the upload when it is complete."""
        running = self._patches.setdefault(upload_id, _RunningPatch())
        if running.receiving:
            raise TusError(409, "another PATCH of this upload is running")
        try:
            return await self._append_locked(afs, upload_id, offset, request, running)
        finally:
            if not running.lock.locked() and not running.lock.statistics().tasks_waiting:
                self._patches.pop(upload_id, None)

    async def _append_locked(self, afs: AsyncFilesystem, upload_id: str, offset: int, request: Request | None,
                             running: _RunningPatch) -> int:
        # a PATCH being wound up (its body over) is waited for: then the offset is the one it left
        async with running.lock:
            record, size = await self._record(afs, upload_id)
            if offset != size:
                raise TusError(409, f"Upload-Offset {offset} is not the upload's offset {size}")
            length = int(str(record["length"]))
            if request is not None:
                running.receiving = True
                try:
                    size = await self._write(afs, upload_id, request, size, length, running)
                finally:
                    running.receiving = False
            if size == length:
                await self._finish(afs, upload_id, length)
            return size

    async def _write(self, afs: AsyncFilesystem, upload_id: str, request: Request, size: int, length: int,
                     running: _RunningPatch) -> int:
        """Append the body (durably); the new size. A client gone mid-body: what was written is
        kept, it resumes from HEAD's offset, unless the PATCH had a checksum (it cannot hold for
        part of the body): then, as on a mismatch or a body past Upload-Length, the upload is
        cut back to `size`."""
        expected = _checksum(request.headers.get("upload-checksum"))
        digest = TUS_ALGORITHMS[expected[0]]() if expected else None
        whole = True
        try:
            async with await afs.open(self._path(upload_id), "ab") as afile:
                try:
                    async for piece in _at_most(request, length - size):
                        if digest is not None:
                            digest.update(piece)
                        await afile.write(piece)
                except ClientDisconnect:
                    whole = False
                running.receiving = False  # the body is over: what is left is closing the file
        except TusError:
            await afs.truncate(self._path(upload_id), size)
            raise
        if expected is not None and digest is not None and (not whole or digest.digest() != expected[1]):
            await afs.truncate(self._path(upload_id), size)
            if whole:
                raise TusError(CHECKSUM_MISMATCH, "Checksum Mismatch: the body does not match Upload-Checksum")
            return size
        return (await afs.stat(self._path(upload_id))).st_size

    async def _finish(self, afs: AsyncFilesystem, upload_id: str, length: int) -> None:
        record, _ = await self._record(afs, upload_id)
        target = str(record["path"])
        await make_directories(afs, target.rsplit("/", 1)[0] or "/")
        await afs.removexattr(self._path(upload_id), XATTR_TUS)
        await afs.rename(self._path(upload_id), target)

    async def delete(self, request: Request, afs: AsyncFilesystem) -> Response:
        upload_id = request.path_params["upload_id"]
        await self._record(afs, upload_id)
        await afs.remove(self._path(upload_id))
        return Response(status_code=204, headers=_headers())

    def routes(self, wrap: RouteWrapper) -> list[Route]:
        one = "/api/v1/uploads/{upload_id}"
        return [Route("/api/v1/uploads/", self.options, methods=["OPTIONS"]),
                Route("/api/v1/uploads/", wrap("tus_create", self.create), methods=["POST"]),
                Route(one, wrap("tus_head", self.head), methods=["HEAD"]),
                Route(one, wrap("tus_patch", self.patch), methods=["PATCH"]),
                Route(one, wrap("tus_delete", self.delete), methods=["DELETE"])]


def _checksum(header: str | None) -> tuple[str, bytes] | None:
    """(algorithm, digest) of an Upload-Checksum header; 400 for an algorithm not supported."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in TUS_ALGORITHMS:
        raise TusError(400, f"Upload-Checksum: {algorithm!r} is not one of Tus-Checksum-Algorithm")
    try:
        return algorithm, base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise TusError(400, "Upload-Checksum: the checksum is not base64") from None


async def _at_most(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body, refused past `limit` bytes (what would make the upload longer than declared)."""
    seen = 0
    async for piece in request.stream():
        seen += len(piece)
        if seen > limit:
            raise TusError(400, "the body goes past Upload-Length")
        yield piece

