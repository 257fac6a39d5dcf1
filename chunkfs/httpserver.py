"""What both aiohttp daemons share: the request-id, auth and error middleware, JSON bodies, serving.

Every request but the public read-only paths must carry a valid `X-Chunkfs-Auth` header
(see `chunkfs.auth`); it is checked before any handler runs, so a refused request changes nothing.

Every request is logged under its `X-Request-Id` (see `chunkfs.request_id`), which error replies
also carry: each request at DEBUG (`request method=… path=… status=… duration_ms=…`), and every
error reply at INFO (4xx) or ERROR (5xx, with the traceback) with its errno and message — but
the routine answers an app names (`make_app(routine_error=…)`, such as ENOENT for a lookup).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import uvloop
from aiohttp import web

from chunkfs import auth, request_id
from chunkfs.errors import FsError

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_KEY = web.AppKey("secret", bytes)
ROUTINE_ERROR = web.AppKey[Callable[[web.Request, FsError], bool]]("routine_error")  # not a class: typed by subscript
ERROR_KEY = web.RequestKey("chunkfs_error", FsError)  # the FsError a request was answered with
PUBLIC_PATHS = frozenset({"/", "/health", "/metrics"})  # read-only: health, metrics, status page


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status, content_type="application/json")


def error_response(status: int, err: str, message: str) -> web.Response:
    return json_response({"errno": err, "message": message, "request_id": request_id.current.get()},
                         status=status)


async def read_body(request: web.Request, record_type: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.read(), type=record_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FsError(22, f"bad request body: {exc}") from None  # EINVAL


@web.middleware
async def chunkfs_middleware(request: web.Request, handler):
    """Request id, auth and errors in one layer (a middleware each cost ~15 us a request).

    Outermost of ours: the request's id is `request_id.current` while it is handled (log lines
    and outgoing calls take it), comes back in the `X-Request-Id` reply header, and its outcome
    is logged once here. A request that fails the auth check is answered 401 before its handler
    runs; an `FsError` becomes its errno's reply, any other exception a logged 500."""
    rid = request_id.accept(request.headers.get(request_id.HEADER))
    token = request_id.current.set(rid)
    started = time.monotonic()
    try:
        try:
            if request.path not in PUBLIC_PATHS and not auth.verify(
                    request.app[SECRET_KEY], request.method, request.raw_path, request.headers.get(auth.HEADER)):
                response = error_response(401, "EACCES", "missing or invalid X-Chunkfs-Auth header")
            else:
                response = await handler(request)
        except FsError as exc:
            request[ERROR_KEY] = exc
            response = error_response(exc.http_status(), exc.name, exc.message)
        except web.HTTPException as exc:
            _log_request(request, exc.status, started)
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = error_response(500, "EIO", "internal server error (see the server's log)")
        _log_request(request, response.status, started)
        if not response.prepared:
            response.headers[request_id.HEADER] = rid
        return response
    finally:
        request_id.current.reset(token)


def _log_request(request: web.Request, status: int, started: float) -> None:
    if status < 400:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request method=%s path=%s status=%d duration_ms=%.1f", request.method, request.path,
                      status, (time.monotonic() - started) * 1000)
        return
    line = f"request method={request.method} path={request.path} status={status} " \
           f"duration_ms={(time.monotonic() - started) * 1000:.1f}"
    error: FsError | None = request.get(ERROR_KEY)
    if error is not None:
        line += f" errno={error.name} message={json.dumps(error.message)}"
    routine = error is not None and request.app.get(ROUTINE_ERROR, _never)(request, error)
    logged = error is None and status >= 500  # logged with its traceback where it was caught
    level = logging.DEBUG if routine or logged else logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "%s", line)


def _never(request: web.Request, error: FsError) -> bool:
    return False


def make_app(secret: bytes, routine_error: Callable[[web.Request, FsError], bool] = _never,
             **kwargs) -> web.Application:
    """`routine_error(request, error)` says which error replies are ordinary answers, logged at
    DEBUG only (a lookup of a name that does not exist is not worth a line)."""
    app = web.Application(middlewares=[chunkfs_middleware], **kwargs)
    app[SECRET_KEY] = secret
    app[ROUTINE_ERROR] = routine_error
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT and listening; stops the daemon with one line if it cannot."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then run the app's cleanup hooks.

    The socket listens before the app's startup hooks run, so a hook that announces readiness
    (`chunkfs.service.attach`) is true: connections made from then on are served."""
    web.run_app(app, sock=listening_socket(host, port), print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5.0, loop=uvloop.new_event_loop())
