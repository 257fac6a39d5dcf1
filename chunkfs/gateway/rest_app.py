"""The REST door (`/api/v1/`, JSON): health and stats of the cluster, and files by path.

Every route but /health (and /metrics, login, share links and the web page's files) needs a
caller (callers.py): an access key, as a bearer token `ID:SECRET` (`Authorization: Bearer
ID:SECRET`) or HTTP basic auth (`curl -u ID:SECRET`), or a user's access token from
`POST /api/v1/auth/login` (`Authorization: Bearer JWT`, or the web page's cookie), and acts as
that caller's uid/gid/groups. Errors are JSON `{"error": CODE, "message": ...}` with the HTTP
status, mapped at one edge (`_error`).

    GET    /api/v1/health               metaserver and chunkservers: up or not (no key needed)
    GET    /api/v1/stats                chunk size, capacity, files, gateway throughput
    PUT    /api/v1/files/{path}         store the body as the file (atomically; directories made)
    GET    /api/v1/files/{path}         the file (Range supported); a directory: its listing
    GET    /api/v1/files/{path}?list    a listing page: ?after=NAME&limit=N (at most 1000)
    GET    /api/v1/files/{path}?status  size, chunks, replicas, chunks under goal
    HEAD   /api/v1/files/{path}         size, ETag, Last-Modified
    DELETE /api/v1/files/{path}         a file, or an empty directory
    /api/v1/uploads/                    tus 1.0 resumable uploads (tus.py)
    /api/v1/auth/, /api/v1/users        login, refresh, logout, who am I, the users (auth_api.py)
    /api/v1/dirs/, /api/v1/move, /api/v1/usage   mkdir, rename/move, bytes below a path (tree_api.py)
    /api/v1/shares, /s/{token}          share links and their downloads (shares.py)
    /, /static/                         the web file manager (web_pages.py, web/)
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chunkfs import CHUNK_SIZE
from chunkfs.client import AsyncFilesystem
from chunkfs.client.os_errors import os_error
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway.access import Access
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.auth_api import AuthApi
from chunkfs.gateway.callers import Authenticator, SessionCheck
from chunkfs.gateway.downloads import file_response
from chunkfs.gateway.metrics import GatewayMetrics
from chunkfs.gateway.objects import make_directories, store_file
from chunkfs.gateway.rest_errors import RestError
from chunkfs.gateway.s3_errors import S3Error
from chunkfs.gateway.shares import ShareLinks
from chunkfs.gateway.streams import RangeNotSatisfiable
from chunkfs.gateway.tokens import TokenIssuer
from chunkfs.gateway.tree_api import make_directory, move, usage
from chunkfs.gateway.tus import TusError, TusUploads
from chunkfs.gateway import web_pages as pages
from chunkfs.protocol.accounts import AccountsClient

log = logging.getLogger(__name__)

MAX_PAGE = 1000
ERRNO_STATUS = {errno.ENOENT: (404, "NotFound"), errno.ENOTDIR: (404, "NotFound"), errno.EACCES: (403, "Forbidden"),
                errno.EPERM: (403, "Forbidden"), errno.EEXIST: (409, "Exists"), errno.ENOTEMPTY: (409, "NotEmpty"),
                errno.EISDIR: (409, "IsADirectory"), errno.EINVAL: (400, "BadPath"),
                errno.ENAMETOOLONG: (400, "BadPath"), errno.ENOSPC: (507, "NoSpace"),
                errno.EDQUOT: (507, "QuotaExceeded"), errno.EROFS: (403, "ReadOnly"),
                errno.EIO: (503, "Unavailable"), errno.ETIMEDOUT: (503, "Unavailable")}


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
    def __init__(self, access: Access, metrics: GatewayMetrics, upload_expiry_s: float = 86400.0) -> None:
        """`upload_expiry_s`: how long an unfinished tus upload is kept after its last PATCH."""
        self.access, self.metrics, self.upload_expiry_s = access, metrics, upload_expiry_s
        server = access.afs.client.meta.server
        self.accounts = AccountsClient(server.http, server.servers)
        self.tokens = TokenIssuer(access.server_key)
        self.authenticator = Authenticator(access, self.tokens, SessionCheck(self.accounts))
        self.auth = AuthApi(self.accounts, self.authenticator, access.keys)
        self.shares = ShareLinks(access, self.accounts, self.tokens, metrics.bytes_out)

    def public(self, operation: str, handler: Callable[[Request], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the door's error edge and metrics (it finds its caller itself, if any)."""
        async def endpoint(request: Request) -> Response:
            try:
                with self.metrics.timed("rest", operation):
                    return await handler(request)
            except Exception as exc:
                error = _error(exc)
                self.metrics.error("rest", operation, error.code)
                return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status,
                                    headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None)
        return endpoint

    def route(self, operation: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """`handler` for an authenticated caller (an access key or a logged-in user: callers.py),
        given the core as that caller sees it; the caller is `request.state.caller`."""
        async def authenticated(request: Request) -> Response:
            caller = request.state.caller = await self.authenticator.caller_of(request)
            return await handler(request, self.access.filesystem_as(caller.uid, caller.gid, caller.groups))
        return self.public(operation, authenticated)

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
        attachment = path.rsplit("/", 1)[-1] if "download" in request.query_params else None
        return await file_response(request, afs, path, st, self.metrics.bytes_out, attachment)

    async def _listing(self, request: Request, afs: AsyncFilesystem, path: str) -> Response:
        try:
            limit = max(1, min(MAX_PAGE, int(request.query_params.get("limit", MAX_PAGE))))
        except ValueError:
            raise RestError(400, "BadRequest", "limit must be a number") from None
        after = request.query_params.get("after", "")
        entries = sorted((e for e in await afs.scandir(path) if e.name > after), key=lambda e: e.name)
        page = entries[:limit]
        listed = [{"name": e.name, "type": "directory" if e.is_dir() else "symlink" if e.is_symlink() else "file",
                   "size": e.stat().st_size, "mtime": e.stat().st_mtime, "uid": e.stat().st_uid,
                   "gid": e.stat().st_gid, "mode": stat.S_IMODE(e.stat().st_mode)} for e in page]
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
            *TusUploads(self.access.afs, self.upload_expiry_s).routes(self.route),
            Route("/api/v1/auth/login", self.public("login", self.auth.login), methods=["POST"]),
            Route("/api/v1/auth/refresh", self.public("refresh", self.auth.refresh), methods=["POST"]),
            Route("/api/v1/auth/logout", self.public("logout", self.auth.logout), methods=["POST"]),
            Route("/api/v1/auth/me", self.route("me", self.auth.me), methods=["GET"]),
            Route("/api/v1/users", self.route("users", self.auth.users), methods=["GET"]),
            Route("/api/v1/keys", self.route("keys", self.auth.access_keys), methods=["GET"]),
            Route("/api/v1/dirs/{path:path}", self.route("mkdir", make_directory), methods=["POST"]),
            Route("/api/v1/move", self.route("move", move), methods=["POST"]),
            Route("/api/v1/usage", self.route("usage", usage), methods=["GET"]),
            *self.shares.routes(self.route),
            Route("/", pages.index, methods=["GET"]),
            Route("/static/{name}", pages.static_file, methods=["GET"]),
        ])
