"""An HTTP proxy between one mount and the metaserver that can hold back the change feed, so a
test can see what a client does when nothing is pushed to it (close-to-open alone).

Every request is passed on as it came, signed again for the metaserver (a signature names the
server it is for).
While the gate is closed, polls of `/v1/changes` wait at the gate, and a poll already passed on
is answered 503 instead of with what the metaserver sent (the mount retries it later, from the
same place in the feed, so it misses nothing once the gate opens)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from collections.abc import Iterator

import aiohttp
from aiohttp import web
from yarl import URL

from chunkfs import auth

FEED = "/v1/changes"
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", auth.HEADER.lower()}


class FeedGate:
    def __init__(self, upstream: str, secret: bytes) -> None:
        self.upstream, self.secret = upstream, secret
        self.address = ""
        self.feed_answers = 0  # feed polls answered with the metaserver's reply
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._open: asyncio.Event
        self._closed: asyncio.Event

    def start(self) -> FeedGate:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self._open, self._closed = asyncio.Event(), asyncio.Event()
        self._open.set()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._pass_on)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[auth.HEADER] = auth.sign(self.secret, request.method, request.raw_path, self.upstream,
                                         headers.items(), body)
        headers["Host"] = self.upstream
        async with self._session.request(request.method, URL(f"http://{self.upstream}{request.raw_path}", encoded=True),
                                         headers=headers, data=body) as answer:
            payload = await answer.read()
            return web.Response(status=answer.status, body=payload,
                                headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})

    async def _pass_on(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path != FEED:
            return await self._forward(request, body)
        await self._open.wait()
        forwarded = asyncio.ensure_future(self._forward(request, body))
        closing = asyncio.ensure_future(self._closed.wait())
        await asyncio.wait({forwarded, closing}, return_when=asyncio.FIRST_COMPLETED)
        if forwarded.done() and not self._closed.is_set():
            closing.cancel()
            self.feed_answers += 1
            return forwarded.result()
        forwarded.cancel()
        closing.cancel()
        return web.Response(status=503, text="feed held by the test")

    def _set(self, open_: bool) -> None:
        def flip() -> None:
            if open_:
                self._closed.clear()
                self._open.set()
            else:
                self._open.clear()
                self._closed.set()
        self._loop.call_soon_threadsafe(flip)

    @contextmanager
    def closed(self) -> Iterator[None]:
        """Nothing of the feed reaches the mount inside the block."""
        self._set(False)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(timeout=10)  # flipped
        try:
            yield
        finally:
            self._set(True)

    def stop(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
