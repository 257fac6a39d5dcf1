"""HTTP/1.1 transports under `SignedHttp`: how bytes get to a server and back.

- `HttpxTransport`: httpx, runs on asyncio and trio; used by the daemons' background work.
- `TrioHttpTransport`: HTTP/1.1 over trio sockets (the framing in `http1.py`) with a keep-alive
  pool per server; used on the mount's hot path. Measured here on loopback: a metadata call
  took 1.8 ms through httpx on trio and ~0.3 ms through this transport with h11 (a bare socket
  round trip is 0.16 ms); h11's share of the mount's CPU per small-file create is gone since
  (`bench/create_cpu.py`).

`headers` include Host (it is signed). Both raise `TransportFailure` for anything worth retrying (refused, reset, time-out, a
keep-alive connection the server closed), ValueError for an address that is none (a server may
register with anything), and return a `Response` otherwise.

A large response body (a chunk) is received straight into one buffer of its Content-Length
with `recv_into`, not copied three times (into a receive buffer, out of it, and into the joined
body); over TLS
(`tls`, see chunkfs.tls) it is decrypted into place (`tls_stream.py`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from chunkfs.protocol import http1
from chunkfs.protocol.tls_stream import TlsSocketStream

# a receive's buffer: a head, a short body (a longer one is received in place) and what came with
# them. Below the gateway's fixed mmap threshold (malloc_tuning.py): at 1 MiB each receive was a
# mapping of its own, mapped, shrunk and unmapped again (mmap, mremap, munmap a metadata call)
RECEIVE_BYTES = 128 * 1024
# bodies at least this long are received with recv_into, and sent apart from the head (no copy);
# a shorter one goes out with its head in one send (a metadata call: one segment, the server
# woken once, where two sends cost ~10% of a gateway's CPU on small PUTs)
DIRECT_BODY_BYTES = 64 * 1024


class TransportFailure(Exception):
    def __init__(self, message: str, stale: bool = False) -> None:
        """`stale`: a kept-alive connection broke (the server restarted, or closed it idle); the
        other idle ones to that server were dropped with it, so a new attempt connects afresh
        and may be made at once."""
        super().__init__(message)
        self.stale = stale


@dataclass
class Response:
    status_code: int
    content: bytes | bytearray  # a bytearray when received directly: callers must not change it
    raw_headers: Sequence[tuple[bytes, bytes]] = ()

    def header(self, name: str) -> str | None:
        """The value of header `name` (any case), or None."""
        wanted = name.lower().encode()
        return next((value.decode("latin-1") for key, value in self.raw_headers if key.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class Transport(Protocol):
    async def send(self, method: str, address: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None, timeout_s: float | None = None) -> Response:
        """`timeout_s`: this exchange's, instead of the transport's."""
        ...

    async def aclose(self) -> None: ...


class HttpxTransport:
    """httpx is imported when the first one is made: the trio-only clients (the CLI's file
    commands, the mount) never use it, and importing it costs ~0.2 s of CPU at their start."""

    def __init__(self, timeout_s: float, connect_timeout_s: float, max_connections: int,
                 tls: ssl.SSLContext | None = None) -> None:
        import httpx

        self._scheme = "https" if tls is not None else "http"
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=tls if tls is not None else True,
        )

    async def send(self, method: str, address: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None, timeout_s: float | None = None) -> Response:
        import httpx

        try:
            response = await self._http.request(
                method, f"{self._scheme}://{address}{target}", content=body, headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout_s is None
                else httpx.Timeout(timeout_s, connect=self._http.timeout.connect))
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise TransportFailure(f"{type(exc).__name__}: {exc}") from None
        except httpx.InvalidURL as exc:  # not a ValueError in httpx; the trio transport's is one
            raise ValueError(f"{address!r} is not an address: {exc}") from None
        return Response(response.status_code, response.content, response.headers.raw)

    async def aclose(self) -> None:
        await self._http.aclose()


class _Connection:
    def __init__(self, stream: trio.SocketStream | TlsSocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()  # received and not yet taken: the start of the next answer's head
        self.reusable = False  # whether the last exchange ended cleanly with the connection kept alive

    async def receive(self) -> bool:
        """More bytes into `buffer`; False if the server closed the connection."""
        data = await self.stream.receive_some(RECEIVE_BYTES)
        self.buffer += data
        return bool(data)

    async def receive_head(self, method: str) -> http1.ResponseHead:
        """The next response head (1xx answers skipped), taken from `buffer`."""
        searched = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end < 0:
                if len(self.buffer) > http1.MAX_HEAD_BYTES:
                    raise http1.ProtocolError(f"a response head over {http1.MAX_HEAD_BYTES} bytes")
                searched = len(self.buffer)
                if not await self.receive():
                    raise trio.BrokenResourceError("server closed the connection")
                continue
            head = http1.parse_response_head(bytes(self.buffer[:end]))
            del self.buffer[:end + 4]
            searched = 0
            if head.status >= 200:
                return head

    async def receive_exactly(self, length: int) -> bytes | bytearray:
        """The next `length` bytes: a big body is received in place (one copy, not three)."""
        if length >= DIRECT_BODY_BYTES and len(self.buffer) < length:
            return await self._receive_into(length)
        while len(self.buffer) < length:
            if not await self.receive():
                raise trio.BrokenResourceError("server closed the connection within a body")
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        return data

    async def _receive_into(self, length: int) -> bytearray:
        body = bytearray(length)
        view = memoryview(body)
        received = len(self.buffer)
        view[:received] = self.buffer
        self.buffer.clear()
        stream = self.stream
        while received < length:
            if isinstance(stream, trio.SocketStream):
                n = await stream.socket.recv_into(view[received:], length - received)
            else:  # TLS: decrypted into place
                n = await stream.receive_into(view[received:])
            if n == 0:
                raise trio.BrokenResourceError("server closed the connection within a body")
            received += n
        return body

    async def receive_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > http1.MAX_HEAD_BYTES:
                raise http1.ProtocolError("a chunk-size or trailer line too long")
            if not await self.receive():
                raise trio.BrokenResourceError("server closed the connection within a body")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    async def receive_chunked(self) -> bytes:
        parts = []
        while size := http1.chunk_size(await self.receive_line()):
            parts.append(await self.receive_exactly(size))
            if await self.receive_line():
                raise http1.ProtocolError("no CRLF after a chunk")
        while await self.receive_line():  # trailers: none is used
            pass
        return b"".join(parts)

    async def receive_until_closed(self) -> bytes:
        while await self.receive():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class TrioHttpTransport:
    def __init__(self, timeout_s: float, connect_timeout_s: float, max_idle_per_server: int = 32,
                 tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_per_server = max_idle_per_server
        self._idle: dict[str, list[_Connection]] = {}

    async def _connect(self, address: str) -> _Connection:
        host, _, port = address.rpartition(":")
        try:
            with trio.fail_after(self.connect_timeout_s):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                if self.tls is None:
                    return _Connection(stream)
                secure = TlsSocketStream(stream, self.tls, host.strip("[]"))
                try:
                    await secure.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                return _Connection(secure)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            raise TransportFailure(f"connect to {address}: {exc or type(exc).__name__}") from None

    async def send(self, method: str, address: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None, timeout_s: float | None = None) -> Response:
        idle = self._idle.get(address)
        pooled = bool(idle)
        conn = idle.pop() if idle else await self._connect(address)
        try:
            # trio.fail_after without its generator-based context manager (a few % of the
            # mount's CPU per create): the exchange's deadline, TooSlowError when it passed
            scope = trio.CancelScope(deadline=trio.current_time() + (self.timeout_s if timeout_s is None else timeout_s))
            with scope:
                response = await self._exchange(conn, method, address, target, headers, body)
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                http1.ProtocolError) as exc:
            await trio.aclose_forcefully(conn.stream)
            stale = pooled and not isinstance(exc, trio.TooSlowError)
            if stale:  # its siblings were opened to the same server process: as dead, most likely
                for other in self._idle.pop(address, []):
                    await trio.aclose_forcefully(other.stream)
            raise TransportFailure(f"{method} {address}{target}: {exc or type(exc).__name__}", stale) from None
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        if conn.reusable:
            pool = self._idle.setdefault(address, [])
            if len(pool) < self.max_idle_per_server:
                pool.append(conn)
                return response
        await trio.aclose_forcefully(conn.stream)
        return response

    async def _exchange(self, conn: _Connection, method: str, address: str, target: str,
                        headers: list[tuple[str, str]], body: bytes | None) -> Response:
        conn.reusable = False
        head = http1.request_head(method, target, headers, len(body) if body else 0)
        if body and len(body) >= DIRECT_BODY_BYTES:
            await conn.stream.send_all(head)
            await conn.stream.send_all(body)
        else:
            await conn.stream.send_all(head + body if body else head)
        answer = await conn.receive_head(method)
        content: bytes | bytearray = b""
        if not answer.has_body(method):
            pass
        elif answer.chunked:
            content = await conn.receive_chunked()
        elif answer.content_length is not None:
            content = await conn.receive_exactly(answer.content_length)
        else:  # framed by the connection's close
            content = await conn.receive_until_closed()
            answer.keep_alive = False
        # a kept-alive connection is used again only if the server sent nothing beyond the answer
        conn.reusable = answer.keep_alive and not conn.buffer
        return Response(answer.status, content, answer.headers)

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                await trio.aclose_forcefully(conn.stream)
        self._idle.clear()
