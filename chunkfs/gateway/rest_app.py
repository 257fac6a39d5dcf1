"""The REST door (`/api/v1/`, JSON): health and stats of the cluster, and files by path.

Every route but /health (and /metrics) needs an access key, as a bearer token `ID:SECRET`
(`Authorization: Bearer ID:SECRET`) or HTTP basic auth (`curl -u ID:SECRET`), and acts as that
key's uid/gid. Errors are JSON `{"error": CODE, "message": ...}` with the HTTP status, mapped at
one edge (`_error`).

    GET    /api/v1/health               metaserver and chunkservers: up or not (no key needed)
    GET    /api/v1/stats                chunk size, capacity, files, gateway throughput
    PUT    /api/v1/files/{path}         store the body as the file (atomically; directories made)
    GET    /api/v1/files/{path}         the file (Range supported); a directory: its listing
    GET    /api/v1/files/{path}?list    a listing page: ?after=NAME&limit=N (at most 1000)
    GET    /api/v1/files/{path}?status  size, chunks, replicas, chunks under goal
    HEAD   /api/v1/files/{path}         size, ETag, Last-Modified
    DELETE /api/v1/files/{path}         a file, or an empty directory
    /api/v1/uploads/                    tus 1.0 resumable uploads (tus.py)
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import stat
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chunkfs import CHUNK_SIZE
from chunkfs.client import AsyncFilesystem
from chunkfs.client.os_errors import os_error
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway.access import Access
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.keys import AccessKey
from chunkfs.gateway.metrics import GatewayMetrics
from chunkfs.gateway.objects import describe_file, make_directories, store_file
from chunkfs.gateway.s3_errors import S3Error
from chunkfs.gateway.streams import RangeNotSatisfiable, parse_range, read_body
from chunkfs.gateway.tus import TusError, TusUploads

log = logging.getLogger(__name__)

MAX_PAGE = 1000
ERRNO_STATUS = {errno.ENOENT: (404, "NotFound"), errno.ENOTDIR: (404, "NotFound"), errno.EACCES: (403, "Forbidden"),
                errno.EPERM: (403, "Forbidden"), errno.EEXIST: (409, "Exists"), errno.ENOTEMPTY: (409, "NotEmpty"),
                errno.EISDIR: (409, "IsADirectory"), errno.EINVAL: (400, "BadPath"),
                errno.ENAMETOOLONG: (400, "BadPath"), errno.ENOSPC: (507, "NoSpace"),
                errno.EDQUOT: (507, "QuotaExceeded"),
                errno.EIO: (503, "Unavailable"), errno.ETIMEDOUT: (503, "Unavailable")}


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(exc: Exception) -> RestError:
    """The REST door's one error edge."""
    if isinstance(exc, (FsError, TransportError)):
        exc = os_error(exc)
    if isinstance(exc, RestError):
        return exc
    if isinstance(exc, TusError):
        return RestError(exc.status, "TusError", exc.message)
    if isinstance(exc, RangeNotSatisfiable):
        return RestError(416, "InvalidRange", "the range is not satisfiable")
    if isinstance(exc, S3Error):
        return RestError(exc.status, exc.code, exc.message)
    if isinstance(exc, OSError):
        status, code = ERRNO_STATUS.get(exc.errno or 0, (500, "InternalError"))
        return RestError(status, code, exc.strerror or str(exc))
    log.exception("unexpected error")
    return RestError(500, "InternalError", "internal error")


Handler = Callable[[Request, AsyncFilesystem], Awaitable[Response]]


class RestApi:
    def __init__(self, access: Access, metrics: GatewayMetrics) -> None:
        self.access, self.metrics = access, metrics

    def key_of(self, request: Request) -> AccessKey:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                credentials = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                credentials = ""
        elif scheme.lower() != "bearer":
            raise RestError(401, "Unauthorized", "an access key is needed: Authorization: Bearer ID:SECRET")
        access_key_id, _, secret = credentials.partition(":")
        key = self.access.key_for_token(access_key_id, secret)
        if key is None:
            raise RestError(401, "Unauthorized", "unknown access key or wrong secret")
        return key

    def route(self, operation: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                with self.metrics.timed("rest", operation):
                    return await handler(request, self.access.filesystem_for(self.key_of(request)))
            except Exception as exc:
                error = _error(exc)
                self.metrics.error("rest", operation, error.code)
                return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status,
                                    headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None)
        return endpoint

    # ---- the cluster ------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        try:
            status = await self.access.afs.client.meta.server.status()
        except Exception as exc:
            return JSONResponse({"status": "down", "metaserver": {"reachable": False, "error": str(exc)}},
                                status_code=503)
        servers = [{"id": s.id, "address": s.address, "alive": s.alive} for s in status.servers]
        healthy = bool(servers) and all(s["alive"] for s in servers)
        return JSONResponse({"status": "ok" if healthy else "degraded", "metaserver": {"reachable": True},
                             "chunkservers": servers})

    async def stats(self, request: Request, afs: AsyncFilesystem) -> Response:
        status = await afs.client.meta.server.status()
        return JSONResponse({
            "chunk_size_bytes": CHUNK_SIZE, "capacity_bytes": status.total_bytes, "free_bytes": status.free_bytes,
            "files": status.files, "directories": status.directories, "chunks": status.chunks,
            "chunks_under_goal": status.chunks_under_goal, "default_goal": status.default_goal,
            "chunkservers_alive": sum(s.alive for s in status.servers), "chunkservers": len(status.servers),
            "gateway": {"received_bytes": self.metrics.received_bytes, "sent_bytes": self.metrics.sent_bytes},
        })

    async def metrics_page(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- files -----------------------------------------------------------------------------------------
    @staticmethod
    def _path(request: Request) -> str:
        path: str = request.path_params["path"]
        return "/" + path.strip("/")

    async def get_file(self, request: Request, afs: AsyncFilesystem) -> Response:
        path = self._path(request)
        if "status" in request.query_params:
            return await self._status(afs, path)
        st = await afs.stat(path)
        if "list" in request.query_params or stat.S_ISDIR(st.st_mode):
            return await self._listing(request, afs, path)
        info = await describe_file(afs, path, path, st)
        byte_range = parse_range(request.headers.get("range"), info.size)
        headers = {"ETag": f'"{info.etag}"', "Content-Length": str(info.size), "Accept-Ranges": "bytes",
                   "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(info.mtime_ns / 1e9))}
        status = 200
        if byte_range is not None:
            headers.update({"Content-Range": byte_range.content_range(info.size), "Content-Length": str(byte_range.length)})
            status = 206
        if request.method == "HEAD":
            return Response(headers=headers, status_code=status)
        afile = await afs.open(path, "rb")
        return StreamingResponse(read_body(afile, byte_range, self.metrics.bytes_out), status_code=status,
                                 headers=headers, media_type=info.content_type)

    async def _listing(self, request: Request, afs: AsyncFilesystem, path: str) -> Response:
        try:
            limit = max(1, min(MAX_PAGE, int(request.query_params.get("limit", MAX_PAGE))))
        except ValueError:
            raise RestError(400, "BadRequest", "limit must be a number") from None
        after = request.query_params.get("after", "")
        entries = sorted((e for e in await afs.scandir(path) if e.name > after), key=lambda e: e.name)
        page = entries[:limit]
        listed = [{"name": e.name, "type": "directory" if e.is_dir() else "symlink" if e.is_symlink() else "file",
                   "size": e.stat().st_size, "mtime": e.stat().st_mtime} for e in page]
        return JSONResponse({"path": path, "entries": listed,
                             "next": page[-1].name if len(entries) > limit else None})

    async def _status(self, afs: AsyncFilesystem, path: str) -> Response:
        st = await afs.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RestError(400, "NotAFile", "status is for files")
        await (await afs.open(path, "rb")).aclose()  # the read permission check
        layout = await afs.client.meta.open_file(st.st_ino)
        goal = layout.attr.goal
        replicas = [len(c.replicas) for c in layout.chunks]
        return JSONResponse({"path": path, "size": st.st_size, "inline": layout.inline is not None,
                             "chunks": len(layout.chunks), "goal": goal, "replicas": replicas,
                             "chunks_under_goal": sum(1 for n in replicas if n < goal)})

    async def put_file(self, request: Request, afs: AsyncFilesystem) -> Response:
        path = self._path(request)
        if path == "/":
            raise RestError(400, "BadPath", "a file needs a name")
        await make_directories(afs, path.rsplit("/", 1)[0] or "/")
        stored = await store_file(afs, path, self.metrics.counted_in(request.stream()), BodyChecksums(request.headers),
                                  content_type=request.headers.get("content-type"))
        return JSONResponse({"path": path, "size": stored.size, "md5": stored.etag}, status_code=201,
                            headers={"ETag": f'"{stored.etag}"'})

    async def delete_file(self, request: Request, afs: AsyncFilesystem) -> Response:
        path = self._path(request)
        if stat.S_ISDIR((await afs.lstat(path)).st_mode):
            await afs.rmdir(path)
        else:
            await afs.remove(path)
        return Response(status_code=204)

    def app(self) -> Starlette:
        files = "/api/v1/files/{path:path}"
        return Starlette(routes=[
            Route("/api/v1/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/api/v1/stats", self.route("stats", self.stats), methods=["GET"]),
            Route(files, self.route("get", self.get_file), methods=["GET", "HEAD"]),
            Route(files, self.route("put", self.put_file), methods=["PUT"]),
            Route(files, self.route("delete", self.delete_file), methods=["DELETE"]),
            *TusUploads(self.access.afs).routes(self.route),
        ])
