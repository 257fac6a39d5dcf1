"""The clients' HTTP/1.1 framing (chunkfs.protocol.http1), and the trio transport on it against a
server that answers every way a server may frame an answer (a plain trio server: no chunkfs
daemon is needed to frame bytes)."""

from __future__ import annotations

import functools

import pytest
import trio

from chunkfs.protocol import http1
from chunkfs.protocol.transport import TransportFailure, TrioHttpTransport


def test_request_head_is_what_was_given():
    head = http1.request_head("POST", "/v1/fs/commit?x=1", [("Host", "h:1"), ("X-Chunkfs-A", "v")], 3)
    assert head == b"POST /v1/fs/commit?x=1 HTTP/1.1\r\nContent-Length: 3\r\nHost: h:1\r\nX-Chunkfs-A: v\r\n\r\n"


@pytest.mark.parametrize("bad", ["v\r\nX-Evil: 1", "v\nX", "v\rX", "v\x00"])
def test_a_header_that_would_end_a_line_is_refused(bad):
    with pytest.raises(ValueError):
        http1.request_head("GET", "/", [("X-Chunkfs-A", bad)], 0)
    with pytest.raises(ValueError):
        http1.request_head("GET", "/" + bad, [], 0)


def test_response_head_parsed():
    head = http1.parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nX-Request-Id: ab")
    assert (head.status, head.content_length, head.keep_alive, head.chunked) == (404, 12, True, False)
    assert head.headers == [(b"content-length", b"12"), (b"x-request-id", b"ab")]
    assert not http1.parse_response_head(b"HTTP/1.0 200 OK").keep_alive
    assert not http1.parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close").keep_alive
    chunked = http1.parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5")
    assert chunked.chunked and chunked.content_length is None


@pytest.mark.parametrize("bad", [b"HTTP/2 200 OK", b"ICY 200 OK", b"HTTP/1.1 200 OK\r\nno colon",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: -1",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip", b"HTTP/1.1 200 OK\r\nBad Name: 1"])
def test_a_bad_response_head_is_a_protocol_error(bad):
    with pytest.raises(http1.ProtocolError):
        http1.parse_response_head(bad)


ANSWERS = {
    "/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/big": b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"b" * 200_000,
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil closed",
    "/extra": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSURPLUS",
    "/garbage": b"NOT HTTP\r\n\r\n",
    "/silent": b"",
}


async def _serve(stream: trio.SocketStream, connections: list[int]) -> None:
    connections.append(1)
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            while len(buffer) < length:
                buffer += await stream.receive_some(65536)
            buffer = buffer[length:]
            path = head.split(b" ")[1].decode()
            await stream.send_all(ANSWERS[path])
            if path in ("/close", "/extra"):
                return
    finally:
        await stream.aclose()


def test_the_transport_reads_every_framing_and_keeps_connections_alive():
    async def main() -> None:
        connections: list[int] = []
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"),
                                            lambda s: _serve(s, connections), 0)
            address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            transport = TrioHttpTransport(5.0, 5.0)
            for path, content, status in [("/length", b"hello", 200), ("/chunked", b"hello", 200),
                                          ("/continue", b"ok", 201), ("/empty", b"", 204),
                                          ("/big", b"b" * 200_000, 200), ("/length", b"hello", 200)]:
                response = await transport.send("POST", address, path, [("Host", address)], b"x" * 70_000)
                assert (response.status_code, bytes(response.content)) == (status, content), path
            assert len(connections) == 1  # one kept-alive connection for all of them
            assert bytes((await transport.send("GET", address, "/close", [], None)).content) == b"until closed"
            assert bytes((await transport.send("GET", address, "/extra", [], None)).content) == b"ok"
            assert bytes((await transport.send("GET", address, "/length", [], None)).content) == b"hello"
            assert len(connections) == 3  # neither the closed one nor the one with surplus was kept
            with pytest.raises(TransportFailure):
                await transport.send("GET", address, "/garbage", [], None)
            with pytest.raises(TransportFailure, match="silent"):  # no answer within the time-out
                await transport.send("GET", address, "/silent", [], None, timeout_s=0.2)
            await transport.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
