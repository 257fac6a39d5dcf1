"""Request ids: one short random id per logical call, sent as `X-Request-Id`, so a line in a
client's error message can be found in the server's log.

The sending side (`chunkfs.protocol.http.SignedHttp`) makes one id per call and keeps it across
the call's retries; the receiving side (`chunkfs.httpserver`) logs it, echoes it in error replies
and keeps it in `current` while the request is handled, so the calls a handler makes on its
behalf (a chunkserver fetching a copy from a peer) carry the same id and its log lines name it.

A call under an id it made itself also numbers its attempts (`X-Chunkfs-Attempt`: 1, 2, ...):
attempt 1 of a new random id was never sent before, so a server that keeps replies by request id
(the metaserver's reply log) need not look for one. A call under the id of the request being
handled sends no number: that id may have been sent before.
"""

from __future__ import annotations

import contextvars
import logging
import secrets

from chunkfs.protocol.limits import TOKEN

HEADER = "X-Request-Id"
ATTEMPT_HEADER = "X-Chunkfs-Attempt"
_VALID = TOKEN

current: contextvars.ContextVar[str] = contextvars.ContextVar("chunkfs_request_id", default="")


def new() -> str:
    """12 hex digits: short enough to read aloud, unique enough to grep for."""
    return secrets.token_hex(6)


def for_outgoing_call() -> str:
    """The id of the request being handled, if any (its calls are part of it), else a new one."""
    return current.get() or new()


def for_outgoing_call_and_is_new() -> tuple[str, bool]:
    """`for_outgoing_call()`, and whether the id was made just now (never sent before)."""
    inherited = current.get()
    return (inherited, False) if inherited else (new(), True)


def accept(received: str | None) -> str:
    """The id a server uses for an incoming request: the client's, if it looks like one."""
    return received if received and _VALID.fullmatch(received) else new()


class LogFilter(logging.Filter):
    """Gives every log record `request_id` (empty outside a request) and `request_tag`
    (` request_id=<id>`, or nothing), which the daemons' formats end the message with, so every
    line written while a request is handled can be grepped for (or parsed as key=value)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = vars(record).setdefault("request_id", current.get())
        record.request_tag = f" request_id={rid}" if rid else ""
        return True
