"""Request ids: one short random id per logical call, sent as `X-Request-Id`, so a line in a
client's error message can be found in the server's log.

The sending side (`chunkfs.protocol.http.SignedHttp`) makes one id per call and keeps it across
the call's retries; the receiving side (`chunkfs.httpserver`) logs it, echoes it in error replies
and keeps it in `current` while the request is handled, so the calls a handler makes on its
behalf (a chunkserver fetching a copy from a peer) carry the same id and its log lines name it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets

HEADER = "X-Request-Id"
_VALID = re.compile(r"[0-9A-Za-z_.-]{1,64}")

current: contextvars.ContextVar[str] = contextvars.ContextVar("chunkfs_request_id", default="")


def new() -> str:
    """12 hex digits: short enough to read aloud, unique enough to grep for."""
    return secrets.token_hex(6)


def for_outgoing_call() -> str:
    """The id of the request being handled, if any (its calls are part of it), else a new one."""
    return current.get() or new()


def accept(received: str | None) -> str:
    """The id a server uses for an incoming request: the client's, if it looks like one."""
    return received if received and _VALID.fullmatch(received) else new()


class LogFilter(logging.Filter):
    """Gives every log record `request_id` (empty outside a request) and `request_tag`
    (` request_id=<id>`, or nothing), which the daemons' formats end the message with, so every
    line written while a request is handled can be grepped for (or parsed as key=value)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get()
        record.request_tag = f" request_id={record.request_id}" if record.request_id else ""
        return True
