"""Which metaserver a client of several calls after a failed attempt
(chunkfs/protocol/metaserver_addresses.py), through `SignedHttp` with a transport that answers as
the test says: no cluster. The failovers themselves: tests/test_netns_failover.py."""

from __future__ import annotations

import os

import trio

from chunkfs.errors import PRIMARY_HEADER, RETRY_HERE_HEADER
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

