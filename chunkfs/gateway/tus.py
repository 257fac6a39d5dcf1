"""Resumable uploads by the tus 1.0 protocol, at /api/v1/uploads/ (core, creation,
creation-with-upload, termination).

An upload is a file `/.chunkfs-uploads/tus-ID` in the namespace (the directory the S3
multipart uploads use, 1777), made by the caller, with its target path and length in its
`user.tus.upload` xattr. Each PATCH appends to it and closes it (durable), so the offset a HEAD
reports is what is stored, also after the client, or the gateway, went away mid-PATCH: the
client resumes from there. When the offset reaches the length the file is renamed onto its
target (the directories made): it appears whole or not at all.

The target is the upload's `path` metadata (`Upload-Metadata: path BASE64`), a path in the
namespace. Not yet: the checksum and expiration extensions (an abandoned upload stays until
DELETE).
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import errno
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from chunkfs.client import AsyncFilesystem
from chunkfs.gateway.multipart import UPLOADS_DIR, ensure_uploads_dir
from chunkfs.gateway.objects import make_directories

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination"
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


class TusUploads:
    """The routes of /api/v1/uploads/ (each handler gets the caller's view of the core)."""

    def __init__(self, root: AsyncFilesystem) -> None:
        self.root = root
        self._locks: dict[str, trio.Lock] = {}  # one PATCH at a time per upload, in this gateway

    @staticmethod
    def _path(upload_id: str) -> str:
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise TusError(404, "no such upload")
        return f"{UPLOADS_DIR}/tus-{upload_id}"

    async def _record(self, afs: AsyncFilesystem, upload_id: str) -> tuple[dict[str, object], int]:
        path = self._path(upload_id)
        try:
            record = json.loads(await afs.getxattr(path, XATTR_TUS))
            size = (await afs.stat(path)).st_size
        except FileNotFoundError:
            raise TusError(404, "no such upload") from None
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise TusError(404, "no such upload") from None
            raise
        return record, size

    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers=_headers({"Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS,
                                                           "Tus-Max-Size": str(MAX_SIZE)}))

    async def create(self, request: Request, afs: AsyncFilesystem) -> Response:
        length = _number(request, "upload-length")
        if length > MAX_SIZE:
            raise TusError(413, "Upload-Length is above Tus-Max-Size")
        target = _metadata(request.headers.get("upload-metadata", "")).get("path", "")
        if not target.startswith("/") or target.endswith("/"):
            raise TusError(400, "Upload-Metadata must give the target as `path` (an absolute file path)")
        await ensure_uploads_dir(self.root)
        upload_id = secrets.token_hex(16)
        path = self._path(upload_id)
        async with await afs.open(path, "xb"):
            pass
        await afs.setxattr(path, XATTR_TUS, json.dumps({"path": afs.canonical(target), "length": length}).encode())
        headers = {"Location": f"/api/v1/uploads/{upload_id}"}
        if request.headers.get("content-type") == OFFSET_OCTETS:
            offset = await self._append(afs, upload_id, 0)
            headers["Upload-Offset"] = str(offset)
        elif length == 0:
            await self._finish(afs, upload_id, 0)
        return Response(status_code=201, headers=_headers(headers))

    async def head(self, request: Request, afs: AsyncFilesystem) -> Response:
        record, size = await self._record(afs, request.path_params["upload_id"])
        return Response(headers=_headers({"Upload-Offset": str(size), "Upload-Length": str(record["length"])}))

    async def patch(self, request: Request, afs: AsyncFilesystem) -> Response:
        if request.headers.get("content-type") != OFFSET_OCTETS:
            raise TusError(415, f"a PATCH body is {OFFSET_OCTETS}")
        offset = _number(request, "upload-offset")
        upload_id = request.path_params["upload_id"]
        new_offset = await self._append(afs, upload_id, offset, request)
        return Response(status_code=204, headers=_headers({"Upload-Offset": str(new_offset)}))

    async def _append(self, afs: AsyncFilesystem, upload_id: str, offset: int, request: Request | None = None) -> int:
        """Write the body at `offset` (which must be the stored size) and close (durable);
        what arrived before a disconnect stays. Finishes the upload when it is complete."""
        lock = self._locks.setdefault(upload_id, trio.Lock())
        if lock.locked():
            raise TusError(409, "another PATCH of this upload is running")
        try:
            return await self._append_locked(afs, upload_id, offset, request, lock)
        finally:
            if not lock.locked():
                self._locks.pop(upload_id, None)

    async def _append_locked(self, afs: AsyncFilesystem, upload_id: str, offset: int, request: Request | None,
                             lock: trio.Lock) -> int:
        async with lock:
            record, size = await self._record(afs, upload_id)
            if offset != size:
                raise TusError(409, f"Upload-Offset {offset} is not the upload's offset {size}")
            length = int(str(record["length"]))
            if request is not None:
                async with await afs.open(self._path(upload_id), "ab") as afile:
                    # a client gone mid-body: what was written is kept, it resumes from HEAD's offset
                    with contextlib.suppress(ClientDisconnect):
                        async for piece in _at_most(request, length - size):
                            await afile.write(piece)
                size = (await afs.stat(self._path(upload_id))).st_size
            if size == length:
                await self._finish(afs, upload_id, length)
            return size

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


async def _at_most(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body, refused past `limit` bytes (what would make the upload longer than declared)."""
    seen = 0
    async for piece in request.stream():
        seen += len(piece)
        if seen > limit:
            raise TusError(400, "the body goes past Upload-Length")
        yield piece

