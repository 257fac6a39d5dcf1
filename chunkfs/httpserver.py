"""What both aiohttp daemons share: the auth and error middlewares, JSON bodies, serving.

Every request but the public read-only paths must carry a valid `X-Chunkfs-Auth` header
(see `chunkfs.auth`); it is checked before any handler runs, so a refused request changes nothing.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from chunkfs import auth
from chunkfs.errors import FsError

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_KEY = web.AppKey("secret", bytes)
PUBLIC_PATHS = frozenset({"/", "/health", "/metrics"})  # read-only: health, metrics, status page


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status, content_type="application/json")


def error_response(status: int, err: str, message: str) -> web.Response:
    return json_response({"errno": err, "message": message}, status=status)


async def read_body(request: web.Request, record_type: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.read(), type=record_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FsError(22, f"bad request body: {exc}") from None  # EINVAL


@web.middleware
async def auth_middleware(request: web.Request, handler):
    if request.path not in PUBLIC_PATHS:
        if not auth.verify(request.app[SECRET_KEY], request.method, request.raw_path,
                           request.headers.get(auth.HEADER)):
            return error_response(401, "EACCES", "missing or invalid X-Chunkfs-Auth header")
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except FsError as exc:
        return error_response(exc.http_status(), exc.name, exc.message)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "EIO", "internal server error (see the server's log)")


def make_app(secret: bytes, **kwargs) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], **kwargs)
    app[SECRET_KEY] = secret
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
                handle_signals=True, shutdown_timeout=5.0)
