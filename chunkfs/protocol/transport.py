"""HTTP/1.1 transports under `SignedHttp`: how bytes get to a server and back.

- `HttpxTransport`: httpx, runs on asyncio and trio; used by the daemons' background work.
- `TrioH11Transport`: h11 over trio sockets with a keep-alive pool per server; used on the
  mount's hot path. Measured here on loopback: a metadata call took 1.8 ms through httpx on
  trio and ~0.3 ms through this transport (a bare socket round trip is 0.16 ms).

`headers` include Host (it is signed). Both raise `TransportFailure` for anything worth retrying (refused, reset, time-out, a
keep-alive connection the server closed), ValueError for an address that is none (a server may
register with anything), and return a `Response` otherwise.

A large response body (a chunk) skips h11's buffers: `TrioH11Transport` receives it straight
into one buffer of its Content-Length with `recv_into`, where h11 would copy every byte three
times (into its receive buffer, out as a `Data` event, and into the joined body); over TLS
(`tls`, see chunkfs.tls) it is decrypted into place (`tls_stream.py`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import h11
import trio

from chunkfs.protocol.tls_stream import TlsSocketStream

RECEIVE_BYTES = 1 << 20
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
        self.h11 = self._new_h11()
        self.body_received_directly = False  # the response body went past h11 (see _receive_body)

    @staticmethod
    def _new_h11() -> h11.Connection:
        return h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    def reusable(self) -> bool:
        """Whether the exchange ended cleanly with the connection kept alive; if so, ready for
        the next one."""
        if self.body_received_directly:
            # h11 saw only the head; a fresh state machine is where a finished exchange leaves it
            self.h11, self.body_received_directly = self._new_h11(), False
            return True
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class TrioH11Transport:
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
            with trio.fail_after(self.timeout_s if timeout_s is None else timeout_s):
                response = await self._exchange(conn, method, address, target, headers, body)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                h11.ProtocolError) as exc:
            await trio.aclose_forcefully(conn.stream)
            stale = pooled and not isinstance(exc, trio.TooSlowError)
            if stale:  # its siblings were opened to the same server process: as dead, most likely
                for other in self._idle.pop(address, []):
                    await trio.aclose_forcefully(other.stream)
            raise TransportFailure(f"{method} {address}{target}: {exc or type(exc).__name__}", stale) from None
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        if conn.reusable():
            pool = self._idle.setdefault(address, [])
            if len(pool) < self.max_idle_per_server:
                pool.append(conn)
                return response
        await trio.aclose_forcefully(conn.stream)
        return response

    async def _exchange(self, conn: _Connection, method: str, address: str, target: str,
                        headers: list[tuple[str, str]], body: bytes | None) -> Response:
        all_headers = [("Content-Length", str(len(body) if body else 0)), *headers]
        out = conn.h11.send(h11.Request(method=method, target=target, headers=all_headers))
        if body and len(body) < DIRECT_BODY_BYTES:  # head and body in one send: one segment, one wake-up
            await conn.stream.send_all(out + conn.h11.send(h11.Data(data=body)) + conn.h11.send(h11.EndOfMessage()))
        elif body:
            await conn.stream.send_all(out)
            # h11 types this Optional for any event (send() has overloads); None is for ConnectionClosed only
            for piece in conn.h11.send_with_data_passthrough(h11.Data(data=body)):  # type: ignore[union-attr]
                await conn.stream.send_all(piece)
            await conn.stream.send_all(conn.h11.send(h11.EndOfMessage()))
        else:
            await conn.stream.send_all(out + conn.h11.send(h11.EndOfMessage()))
        status = 0
        head: Sequence[tuple[bytes, bytes]] = ()
        parts: list[bytes] = []
        while True:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                data = await conn.stream.receive_some(RECEIVE_BYTES)
                if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                    raise trio.BrokenResourceError("server closed the connection")
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status, head = event.status_code, event.headers
                length = _direct_body_length(method, event)
                if length is not None:
                    return Response(status, await self._receive_body(conn, length), head)
            elif isinstance(event, h11.Data):
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, parts[0] if len(parts) == 1 else b"".join(parts), head)
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("server closed the connection")

    @staticmethod
    async def _receive_body(conn: _Connection, length: int) -> bytearray:
        """The `length` bytes of body after the response head h11 just parsed, received in
        place; the connection stays usable only if the server sent nothing beyond them."""
        early, _closed = conn.h11.trailing_data
        if len(early) > length:
            raise h11.RemoteProtocolError("data after the response body")
        body = bytearray(length)
        view = memoryview(body)
        view[: len(early)] = early
        received = len(early)
        stream = conn.stream
        while received < length:
            if isinstance(stream, trio.SocketStream):
                n = await stream.socket.recv_into(view[received:], length - received)
            else:  # TLS: decrypted into place
                n = await stream.receive_into(view[received:])
            if n == 0:
                raise trio.BrokenResourceError("server closed the connection within a body")
            received += n
        conn.body_received_directly = True
        return body

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                await trio.aclose_forcefully(conn.stream)
        self._idle.clear()


def _direct_body_length(method: str, response: h11.Response) -> int | None:
    """The Content-Length of a response whose body `_receive_body` should take (a big one,
    on a connection kept alive), else None (h11 reads it)."""
    if method == "HEAD" or response.status_code in (204, 304) or response.http_version != b"1.1":
        return None
    length = None
    for name, value in response.headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            return None
        elif name == b"transfer-encoding":
            return None
    return length if length is not None and length >= DIRECT_BODY_BYTES else None
