"""The HTTP server under the gateway, alone: what Starlette on hypercorn's trio worker costs,
with no cluster behind it (a null app), so the gateway's ceiling is known apart from the core.

    .venv/bin/python bench/gateway_server.py [--seconds 5] [--connections 16] [--put-mib 1024]

Starts the server in a subprocess (`serve` below: `hypercorn.trio.serve` in a trio nursery, as
chunkfs-gateway runs it), then from this process: small GETs on keep-alive connections for
`--seconds` (requests/s), then one streamed PUT of `--put-mib` MiB (GB/s the server consumed).
The client is raw sockets on trio, so it costs the server's 2 cores as little as it can; the
figures still share the machine with it (and with whatever else runs).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import trio

SERVER = r'''
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def small(request):
    return Response(b"hello", media_type="text/plain")

async def sink(request):
    total = 0
    async for piece in request.stream():
        total += len(piece)
    return Response(str(total).encode())

config = Config()
config.bind = [sys.argv[1]]
config.accesslog = None
app = Starlette(routes=[Route("/small", small), Route("/sink", sink, methods=["PUT"])])
trio.run(serve, app, config)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> None:
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += await stream.receive_some(65536)
    head = bytes(buffer[:end]).lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(buffer) < end + 4 + length:
        buffer += await stream.receive_some(65536)
    del buffer[: end + 4 + length]


async def small_gets(port: int, seconds: float, connections: int) -> float:
    done = 0
    request = f"GET /small HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    deadline = trio.current_time() + seconds

    async def client() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(request)
                await read_response(stream, buffer)
                done += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(client)
    return done / (time.perf_counter() - started)


async def streamed_put(port: int, mib: int) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    piece = bytes(1 << 20)
    async with stream:
        started = time.perf_counter()
        await stream.send_all(f"PUT /sink HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {mib << 20}\r\n\r\n".encode())
        for _ in range(mib):
            await stream.send_all(piece)
        await read_response(stream, bytearray())
        return (mib << 20) / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--put-mib", type=int, default=1024)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, f"127.0.0.1:{port}"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        rate = trio.run(small_gets, port, args.seconds, args.connections)
        print(f"small GETs: {rate:,.0f} requests/s ({args.connections} keep-alive connections, {args.seconds:g} s)")
        speed = trio.run(streamed_put, port, args.put_mib)
        print(f"streamed PUT of {args.put_mib} MiB: {speed:.2f} GB/s consumed by the server")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
