"""What both aiohttp daemons share: the request-id, auth and error middleware, JSON bodies, serving.

Every request passes one gate before its handler runs (`_refusal`), so a refused request changes
nothing:
- a compressed body (`Content-Encoding` other than identity) is answered 415: no chunkfs client
  compresses (chunks are checked as stored, metadata bodies are small), and an inflated body is
  where a 2 MB request becomes gigabytes; the servers never inflate one (`auto_decompress=False`);
- a body longer than its route allows (`BodyLimit`, given per route to `make_app`, DEFAULT_BODY
  for the rest) is answered 413 from its Content-Length before it is read, or once it passes the
  limit while being read (no Content-Length); a body that has not fully arrived within
  `body_timeout_s` (slow, or shorter than its Content-Length) is answered 408, one whose sender
  hangs up before it has all arrived is logged as a 400 (ECONNRESET) in one line. These answers
  (and 401) close the connection, at most LINGER_S after the answer: until then what is still
  coming of the body is read and dropped, so the client reads the answer before the close;
- a request head (request line and headers) must have arrived `body_timeout_s` after the
  connection was opened or its previous answer sent, else the connection is closed unanswered: a
  client sending a head a byte at a time holds a connection that long at most. This is aiohttp's
  keep-alive timer (`keepalive_timeout`, see `serve`), which closes a connection still waiting
  for a whole head when it fires, so an idle kept-alive connection is closed after as long (the
  chunkfs clients reconnect at once, see `chunkfs.protocol.transport`);
- `/health` is open; `/metrics` and the status page `/` are open to whom `status_open` says
  (`status_access`: loopback peers only by default), the others need an admin's signature;
- a request carrying a chunk token (`chunkfs.chunk_tokens`, on a chunkserver's chunk routes) is
  admitted by its token (`token_check`: 403 for a bad or expired one, checked first) and a
  signature, as below, with the token key of the holder the token was issued to (403 for
  another signer's); its role is not asked;
- every other request must carry a valid `X-Chunkfs-Auth` header (see
  `chunkfs.auth`), signed for a Host that names this server (`own_host`) with a key the server's
  `KeyRing` holds: its head is checked
  first (a request without a key makes the server read no body; one signed before the server
  started is answered 503, which a client retries signed anew), then the body against the digest it signed (a chunk PUT's body is checked against its
  signed checksum header by the chunkserver as it stores it), then its nonce is used up; 401 else.
  Last, the signer's role must be allowed the route (`authorize`, the metaserver's
  `access_policy`): 403 else.

Every request is logged under its `X-Request-Id` (see `chunkfs.request_id`), which error replies
also carry: each request at DEBUG (`request method=… path=… status=… duration_ms=…`, the path as
sent, escaped), and every error reply at INFO (4xx) or ERROR (5xx, with the traceback) with its
errno and message — but the routine answers an app names (`make_app(routine_error=…)`, such as
ENOENT for a lookup).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import uvloop
from aiohttp import hdrs, web

from chunkfs import auth, request_id
from chunkfs.chunk_tokens import TOKEN_HEADER
from chunkfs.errors import FsError
from chunkfs.log_lines import printable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class BodyLimit:
    """What a route accepts as a request body. `checksummed`: the handler reads the body itself
    (`read_body_pieces`) and stores it only if it matches the signed `X-Chunkfs-Checksum` header,
    which stands for the body in the signature (see `chunkfs.auth`)."""

    max_bytes: int
    checksummed: bool = False


DEFAULT_BODY = BodyLimit(1 << 20)  # 1 MiB: every route not given a limit of its own
DEFAULT_BODY_TIMEOUT_S = 30.0
LINGER_S = 2.0  # aiohttp's default is 10 s
BODY_TIMEOUT_HELP = ("seconds a request head, and then its body, may take to arrive: a connection with a slower "
                     "head (or idle that long) is closed; a slower body, or one shorter than its Content-Length, "
                     "is answered 408 and its connection closed")

VERIFIER = web.AppKey("verifier", auth.Verifier)
BODY_LIMITS = web.AppKey[dict[str, "BodyLimit"]]("body_limits")  # "METHOD /route/{as_added}" -> BodyLimit
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)
OWN_HOST = web.AppKey[Callable[[str], bool]]("own_host")  # whether a Host header names this server
ROUTINE_ERROR = web.AppKey[Callable[[web.Request, FsError], bool]]("routine_error")  # not a class: typed by subscript
ERROR_KEY = web.RequestKey("chunkfs_error", FsError)  # the FsError a request was answered with
SIGNER = web.RequestKey("chunkfs_signer", auth.SignedRequest)  # the checked signature of a signed request
AUTHORIZE = web.AppKey[Callable[[web.Request, str], str | None]]("authorize")  # (request, role) -> why not
TOKEN_CHECK = web.AppKey[Callable[[web.Request], FsError | str]]("token_check")  # a chunk token's verdict: its holder's key id
# counts and times every request: (request, status, seconds) (chunkfs.metrics.install_http)
REQUEST_COUNTER = web.AppKey[Callable[[web.Request, int, float], None]]("request_counter")
STATUS_OPEN = web.AppKey[Callable[[web.Request], bool]]("status_open")  # /metrics and / without a key?
OPEN_PATHS = frozenset({"/health"})  # always open: liveness, no secrets (README)
STATUS_PATHS = frozenset({"/", "/metrics"})  # read-only: status page, metrics (README)
STATUS_ACCESS = ("loopback", "open", "signed")
STATUS_ACCESS_HELP = ("who may read /metrics and the status page without a key: loopback (peers on this host; "
                      "others need an admin key), open (everyone) or signed (only requests signed by an admin key)")


class BodyRefused(FsError):
    """A request body refused at the edge (too long, too slow, compressed): answered with its own
    status, and the connection closed, since the rest of the body is not read."""

    def __init__(self, status: int, err: int, message: str) -> None:
        super().__init__(err, message)
        self.status = status

    def http_status(self) -> int:
        return self.status


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status, content_type="application/json")


def error_response(status: int, err: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"errno": err, "message": message, "request_id": request_id.current.get()},
                             status=status)
    if headers:
        response.headers.update(headers)
    return response


async def read_body(request: web.Request, record_type: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.read(), type=record_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FsError(22, f"bad request body: {exc}") from None  # EINVAL


def body_limit(request: web.Request) -> BodyLimit:
    resource = getattr(request.match_info.route, "resource", None)
    limits = request.app[BODY_LIMITS]
    if resource is None or not limits:
        return DEFAULT_BODY
    return limits.get(f"{request.method} {resource.canonical}", DEFAULT_BODY)


async def read_body_pieces(request: web.Request, max_bytes: int | None = None) -> list[bytes]:
    """The request body in the pieces it arrived in (joining them copies every byte again),
    within the route's `BodyLimit` (or `max_bytes`) and the app's body time-out, else
    `BodyRefused`.

    A body that came whole with the head (every metadata call's) is taken as it is, with no
    time-out to arm: the time-out's set-up alone was a tenth of a metaserver request's CPU."""
    if max_bytes is None:
        max_bytes = body_limit(request).max_bytes
    if request.content.is_eof():
        body = request.content.read_nowait()
        if len(body) > max_bytes:
            raise BodyRefused(413, errno.EFBIG, f"request body over {max_bytes} bytes")
        return [body] if body else []
    request.content.set_read_chunk_size(max_bytes)  # no pausing the socket while the body arrives
    pieces = []
    received = 0
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_S]):
            while piece := await request.content.readany():
                received += len(piece)
                if received > max_bytes:
                    raise BodyRefused(413, errno.EFBIG, f"request body over {max_bytes} bytes")
                pieces.append(piece)
    except TimeoutError:
        raise BodyRefused(408, errno.ETIMEDOUT, f"request body not received within "
                                                f"{request.app[BODY_TIMEOUT_S]:g} s") from None
    except ConnectionResetError:  # aiohttp's word for a sender gone before its Content-Length arrived
        raise BodyRefused(400, errno.ECONNRESET, f"the connection closed after {received} bytes of the "
                                                 f"request body") from None
    return pieces


async def _refusal(request: web.Request) -> web.Response | None:
    """None if the request may go to its handler, else the answer it gets (see the module's
    docstring). The body of a route that is not `checksummed` is read here, under the limits,
    and kept for the handler's `request.read()`."""
    if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
        raise BodyRefused(415, errno.EOPNOTSUPP, "compressed request bodies are not accepted")
    limit = body_limit(request)
    length = request.content_length
    if length is not None and length > limit.max_bytes:
        raise BodyRefused(413, errno.EFBIG, f"request body of {length} bytes is over {limit.max_bytes}")
    if request.path in OPEN_PATHS or (request.path in STATUS_PATHS and request.app[STATUS_OPEN](request)):
        return None
    token_check = request.app.get(TOKEN_CHECK)
    token_holder = None  # the key id a request presenting a chunk token must be signed with
    if token_check is not None and TOKEN_HEADER in request.headers:
        verdict = token_check(request)
        if isinstance(verdict, FsError):
            return error_response(verdict.http_status(), verdict.name, verdict.message)
        token_holder = verdict
    host = request.headers.get(hdrs.HOST, "")
    if not request.app[OWN_HOST](host):
        return _unauthorized(f"signed for another server (Host {printable(host)!r})")
    verifier = request.app[VERIFIER]
    signed = verifier.check_head(request.method, request.raw_path, host, request.headers.items(),
                                 request.headers.get(auth.HEADER))
    if signed is None or (signed.digest == auth.CHECKSUMMED) != limit.checksummed:
        return _unauthorized("missing or invalid X-Chunkfs-Auth header")
    if verifier.too_early(signed):
        response = error_response(503, "EAGAIN", "signed before this server's replay window: sign it again")
        response.force_close()
        return response
    if not limit.checksummed:
        body = b"".join(await read_body_pieces(request, limit.max_bytes))
        if not signed.body_matches(body):
            return _unauthorized("the body is not the one signed in X-Chunkfs-Auth")
        request._read_bytes = body  # what request.read() answers (aiohttp keeps the body there)
    if not verifier.first_use(signed):
        return _unauthorized("X-Chunkfs-Auth was used before (a replay)")
    request[SIGNER] = signed
    if token_holder is not None:
        if signed.key_id != token_holder:
            return error_response(403, "EACCES", "the chunk token was issued to another holder than the signer")
        return None
    why_not = request.app[AUTHORIZE](request, signed.role)
    if why_not is not None:
        return error_response(403, "EPERM", why_not)
    return None


def _unauthorized(message: str) -> web.Response:
    """401, closing the connection: a body not read yet is not worth reading (a chunkfs client
    that is refused has the wrong secret, and reconnects)."""
    response = error_response(401, "EACCES", message)
    response.force_close()
    return response


@web.middleware
async def chunkfs_middleware(request: web.Request, handler):
    """Request id, the gate, errors and the request's count in one layer (a middleware each
    cost ~15 us a request).

    Outermost of ours: the request's id is `request_id.current` while it is handled (log lines
    and outgoing calls take it), comes back in the `X-Request-Id` reply header, and its outcome
    is logged once here. A request the gate refuses is answered before its handler runs; an
    `FsError` becomes its errno's reply, any other exception a logged 500. Every request, refused
    and failed ones too, is counted and timed by the app's `REQUEST_COUNTER` if it has one
    (499: the client went away before its answer)."""
    rid = request_id.accept(request.headers.get(request_id.HEADER))
    token = request_id.current.set(rid)
    started = time.monotonic()
    status = 499
    try:
        try:
            response = await _refusal(request) or await handler(request)
        except FsError as exc:
            request[ERROR_KEY] = exc
            response = error_response(exc.http_status(), exc.name, exc.message)
            if isinstance(exc, BodyRefused):
                response.force_close()
        except web.HTTPException as exc:
            status = exc.status
            _log_request(request, exc.status, started)
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, printable(request.raw_path))
            response = error_response(500, "EIO", "internal server error (see the server's log)")
        status = response.status
        _log_request(request, status, started)
        if not response.prepared:
            response.headers[request_id.HEADER] = rid
        return response
    finally:
        request_id.current.reset(token)
        # the body goes now, not when the request does: an error's traceback holds the request
        # in a cycle, freed only at the next garbage collection (12 bodies of 14 MiB kept 200 MB)
        request._read_bytes = None
        counter = request.app.get(REQUEST_COUNTER)
        if counter is not None:
            counter(request, status, time.monotonic() - started)


def _log_request(request: web.Request, status: int, started: float) -> None:
    if status < 400:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request method=%s path=%s status=%d duration_ms=%.1f", printable(request.method),
                      printable(request.raw_path), status, (time.monotonic() - started) * 1000)
        return
    line = f"request method={printable(request.method)} path={printable(request.raw_path)} status={status} " \
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


def any_host(host: str) -> bool:
    return True


def any_role(request: web.Request, role: str) -> str | None:
    return None


def status_access(mode: str) -> Callable[[web.Request], bool]:
    """`STATUS_OPEN` for a `status_access` option (STATUS_ACCESS_HELP)."""
    if mode not in STATUS_ACCESS:
        raise ValueError(f"status_access must be one of {', '.join(STATUS_ACCESS)}, not {mode!r}")
    if mode == "open":
        return lambda request: True
    if mode == "signed":
        return lambda request: False
    return lambda request: _is_loopback(request.remote)


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def host_on_port(port: int) -> Callable[[str], bool]:
    """For a server known by names it cannot list (a metaserver behind DNS): the port at least."""
    suffix = f":{port}"
    return lambda host: host.endswith(suffix)


def make_app(keys: auth.KeyRing | bytes, routine_error: Callable[[web.Request, FsError], bool] = _never, *,
             own_host: Callable[[str], bool] = any_host, body_limits: dict[str, BodyLimit] | None = None,
             body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
             authorize: Callable[[web.Request, str], str | None] = any_role,
             status_open: Callable[[web.Request], bool] | None = None) -> web.Application:
    """`routine_error(request, error)` says which error replies are ordinary answers, logged at
    DEBUG only (a lookup of a name that does not exist is not worth a line). `own_host(host)`:
    whether a signed request's Host header names this server (the signature covers Host, so a
    request signed for one server is refused by the others, whose nonces it never used).
    `body_limits`: the
    `BodyLimit` of a route, by method and path as added (`POST /v1/fs/{op}`); DEFAULT_BODY for
    the others. `keys`: whose signatures are accepted (a secret: that one only); `authorize`:
    which role may make which request; `status_open`: see STATUS_OPEN."""
    limits = body_limits or {}
    largest = max([DEFAULT_BODY.max_bytes, *(limit.max_bytes for limit in limits.values())])
    app = web.Application(middlewares=[chunkfs_middleware], client_max_size=largest)
    app[VERIFIER] = auth.Verifier(keys)
    app[AUTHORIZE] = authorize
    app[STATUS_OPEN] = status_open or status_access("open")
    app[OWN_HOST] = own_host
    app[BODY_LIMITS] = limits
    app[BODY_TIMEOUT_S] = body_timeout_s
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


def serve(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then run the app's cleanup hooks; with `tls`, TLS only.

    The socket listens before the app's startup hooks run, so a hook that announces readiness
    (`chunkfs.service.attach`) is true: connections made from then on are served. A request
    head has the app's body time-out to arrive (aiohttp's keep-alive timer, armed when a
    connection opens and after each answer, closes a connection still short of a whole head)."""
    web.run_app(app, sock=listening_socket(host, port), print=None, handle_signals=True, ssl_context=tls,
                loop=uvloop.new_event_loop(), **runner_options(app))


def runner_options(app: web.Application) -> dict[str, Any]:
    """How every chunkfs server runs an app (`serve`, and the metaserver's changing roles)."""
    return {"access_log": None, "auto_decompress": False, "lingering_time": LINGER_S,
            "keepalive_timeout": app[BODY_TIMEOUT_S], "shutdown_timeout": 5.0}


async def start_serving(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
                        ) -> web.AppRunner:
    """Serve `app` on HOST:PORT from within a running event loop until the runner's `cleanup()`
    (which runs the app's cleanup hooks and closes the socket); with `tls`, TLS only."""
    runner = web.AppRunner(app, **runner_options(app))
    await runner.setup()
    try:
        await web.SockSite(runner, listening_socket(host, port), shutdown_timeout=5.0, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
