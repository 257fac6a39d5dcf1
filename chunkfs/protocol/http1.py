"""The HTTP/1.1 framing of the clients' trio transport: a request head written, a response head
read, and how long its body is.

Only what a chunkfs client needs of HTTP/1.1, checked as strictly as it matters: requests it
makes itself (a header name or value, or a target, with CR, LF or NUL is refused: no header
can be smuggled in), answers from chunkfs servers (a body framed by Content-Length, by chunked
transfer coding, or by the connection's close), keep-alive. A general library (h11) validated
and re-validated every header of every request and answer through a state machine per
connection: ~15% of the mount's CPU per small-file create went there (py-spy).

A response is trusted no further than its framing: a head over MAX_HEAD_BYTES, a status line or
header line that does not parse, a Content-Length that is not a number (or two that differ) or
a chunk size that is not hex is a `ProtocolError`, and the connection is dropped.
"""

from __future__ import annotations

import re

MAX_HEAD_BYTES = 64 * 1024  # a response head (status line and headers) at most this long
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([1-5][0-9][0-9])(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


def request_head(method: str, target: str, headers: list[tuple[str, str]], body_bytes: int) -> bytes:
    """The request line and headers (with Content-Length), ended by the blank line.
    ValueError if anything given would end a line early (CR, LF, NUL)."""
    lines = [f"{method} {target} HTTP/1.1", f"Content-Length: {body_bytes}"]
    lines += [f"{name}: {value}" for name, value in headers]
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\x00" in text:
        raise ValueError("a request line or header holds CR, LF or NUL")
    return (text + "\r\n\r\n").encode("latin-1")


class ResponseHead:
    """A parsed response head. `headers`: (name lower-cased, value) in the order sent."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool, chunked: bool,
                 content_length: int | None) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive  # HTTP/1.1 and no `Connection: close`
        self.chunked = chunked
        self.content_length = content_length

    def has_body(self, method: str) -> bool:
        return method != "HEAD" and self.status not in (204, 304)


def parse_response_head(head: bytes) -> ResponseHead:
    """`head`: the bytes before the blank line that ends it."""
    status_line, _, rest = head.partition(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
    keep_alive = match.group(1) == b"1.1"
    headers = []
    chunked = False
    content_length: int | None = None
    for line in rest.split(b"\r\n") if rest else ():
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        name, value = name.lower(), value.strip(b" \t")
        headers.append((name, value))
        if name == b"content-length":
            if not value.isdigit() or (content_length is not None and content_length != int(value)):
                raise ProtocolError(f"bad Content-Length: {value[:40]!r}")
            content_length = int(value)
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise ProtocolError(f"unknown Transfer-Encoding: {value[:40]!r}")
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            keep_alive = False
    if chunked:
        content_length = None  # RFC 9112 6.3: chunked framing wins
    return ResponseHead(int(match.group(2)), headers, keep_alive, chunked, content_length)


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored)."""
    size = line.partition(b";")[0].strip(b" \t")
    if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
        raise ProtocolError(f"bad chunk size line: {line[:40]!r}")
    return int(size, 16)
