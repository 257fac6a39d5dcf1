"""Pieces of metaserver failover without a cluster: which metaserver a client of several calls
after a failed attempt (chunkfs/protocol/metaserver_addresses.py, through `SignedHttp` with a
transport that answers as the test says), and the one listening socket a metaserver serves its
roles on in turn (failover.py). The failovers themselves: tests/test_netns_failover.py."""

from __future__ import annotations

import asyncio
import os

import trio
from aiohttp import web

from chunkfs.errors import PRIMARY_HEADER, RETRY_HERE_HEADER
from chunkfs.httpserver import listening_socket, make_app, start_serving
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.metaserver_addresses import MetaserverAddresses
from chunkfs.protocol.transport import Response, TransportFailure


class Scripted:
    """A transport answering each address from its own list of answers, in turn (a
    TransportFailure in the list is raised: no answer); every address called is noted."""

    def __init__(self, answers: dict[str, list[Response | TransportFailure]]) -> None:
        self.answers = answers
        self.called: list[str] = []

    async def send(self, method, address, target, headers, body, timeout_s=None) -> Response:
        self.called.append(address)
        answer = self.answers[address].pop(0)
        if isinstance(answer, TransportFailure):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


OK = Response(200, b"{}")


def unavailable(*headers: tuple[str, str]) -> Response:
    return Response(503, b'{"errno": "EAGAIN", "message": "not now"}',
                    [(name.encode(), value.encode()) for name, value in headers])


def called(answers: dict[str, list[Response | TransportFailure]]) -> list[str]:
    """The addresses one call to the metaservers `a` and `b` went to, in turn."""
    transport = Scripted(answers)
    http = SignedHttp(os.urandom(32), retry_s=30)
    http.transport = transport
    trio.run(lambda: http.request("POST", "/v1/fs/getattr", content=b"{}", servers=MetaserverAddresses("a,b")))
    return transport.called


def test_a_primary_that_says_to_ask_it_again_is_asked_again():
    # a primary waiting for its chunkservers to report after its start:
    # the other address may be the former primary, hung, which would hold the call an attempt's
    # whole time-out
    assert called({"a": [unavailable((RETRY_HERE_HEADER, "1")), unavailable((RETRY_HERE_HEADER, "1")), OK],
                   "b": []}) == ["a", "a", "a"]


def test_a_metaserver_that_is_not_the_primary_sends_the_call_on():
    assert called({"a": [unavailable()], "b": [OK]}) == ["a", "b"]
    assert called({"a": [TransportFailure("refused")], "b": [OK]}) == ["a", "b"]
    assert called({"a": [unavailable((PRIMARY_HEADER, "b"))], "b": [OK]}) == ["a", "b"]


def test_a_standby_naming_a_primary_that_did_not_answer_is_asked_again():
    # the old primary did not answer: the standby names it until its lease lapses and it takes over
    assert called({"a": [TransportFailure("timed out")],
                   "b": [unavailable((PRIMARY_HEADER, "a")), unavailable((PRIMARY_HEADER, "a")), OK]}
                  ) == ["a", "b", "b", "b"]


def test_a_connection_made_between_two_roles_waits_for_the_next_one():
    # refused, a client would move on to the other metaserver, maybe the hung former primary
    async def run() -> bytes:
        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]

        def role(name: str) -> web.Application:
            app = make_app(os.urandom(32))

            async def health(request: web.Request) -> web.Response:
                return web.Response(text=name)

            app.router.add_get("/health", health)
            return app

        try:
            first = await start_serving(role("standby"), sock)
            await first.cleanup()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no role serves now
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            second = await start_serving(role("primary"), sock)
            try:
                return await reader.read()
            finally:
                writer.close()
                await second.cleanup()
        finally:
            sock.close()

    assert asyncio.run(run()).endswith(b"primary")
