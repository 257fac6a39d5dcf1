"""Request ids between a real `SignedHttp` client and a real aiohttp server made by `make_app`:
one id per call, the same on its retries, echoed in error replies and in the client's error."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest
from aiohttp import web

from chunkfs import request_id
from chunkfs.errors import FsError, TransportError
from chunkfs.httpserver import make_app
from chunkfs.protocol.http import SignedHttp

SECRET = b"s" * 32


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


def test_one_id_per_call_kept_across_retries_and_named_in_errors(caplog):
    seen: list[str] = []
    outgoing: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        seen.append(request.headers[request_id.HEADER])
        outgoing.append(request_id.for_outgoing_call())  # what a call made from here would carry
        if len(seen) % 3:
            return web.Response(status=503)
        raise FsError(errno.EINVAL, "bad goal")

    async def main() -> None:
        app = make_app(SECRET)
        app.router.add_post("/x", flaky)
        runner, address = await serve(app)
        http = SignedHttp(SECRET, retry_s=5)
        try:
            with pytest.raises(FsError) as raised:
                await http.request("POST", f"http://{address}/x")
            with pytest.raises(FsError) as again:
                await http.request("POST", f"http://{address}/x")
            assert again.value.errno == errno.EINVAL
        finally:
            await http.aclose()
            await runner.cleanup()
        assert len(seen) == 6 and len(set(seen[:3])) == 1 and len(set(seen[3:])) == 1 and seen[0] != seen[3]
        assert outgoing == seen  # calls a handler makes are part of its request
        error = raised.value
        assert error.errno == errno.EINVAL and error.message == "bad goal"
        assert error.request_id == seen[0] and f"request_id={seen[0]}" in str(error)

    caplog.handler.addFilter(request_id.LogFilter())  # as the daemons' log handler has
    with caplog.at_level(logging.INFO, logger="chunkfs.httpserver"):
        asyncio.run(main())
    lines = [rec.getMessage() + f" request_id={rec.request_id}" for rec in caplog.records
             if getattr(rec, "request_id", "") and "status=400" in rec.getMessage()]
    assert len(lines) == 2 and f"request_id={seen[0]}" in lines[0] and "errno=EINVAL" in lines[0]


def test_an_unreachable_server_names_the_request_id():
    async def main() -> None:
        http = SignedHttp(SECRET, retry_s=0.3, connect_timeout_s=0.2)
        try:
            with pytest.raises(TransportError, match=r"request_id=[0-9a-f]{12}\)"):
                await http.request("GET", "http://127.0.0.1:9/nothing")
        finally:
            await http.aclose()

    asyncio.run(main())


def test_a_bad_incoming_id_is_replaced():
    assert request_id.accept("abc-123") == "abc-123"
    for bad in ("", None, "x" * 65, "a b", "a\nb"):
        assert len(request_id.accept(bad)) == 12
