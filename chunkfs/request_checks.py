"""What a server reads from a request besides its JSON body, checked in one place: path parts,
query parameters and chunkfs headers.

Each reader returns the value in range or raises `FsError(EINVAL)` (a 400 with its errno), so a
handler never sees a 400-digit chunk id, a negative inode, an infinite time-out or a client id
that cannot be written back out (a byte 0xE9 in `X-Chunkfs-Client` once made every change-feed
reply that held its change fail). The limits are those of `chunkfs.protocol.limits`.
"""

from __future__ import annotations

import errno
import math

from aiohttp import web

from chunkfs import request_id
from chunkfs.errors import FsError
from chunkfs.protocol import limits
from chunkfs.protocol.meta_client import CLIENT_HEADER

_MAX_DIGITS = 20  # more digits than any 64-bit number: refused before int() reads them


def parse_int(text: str, what: str, low: int, high: int) -> int:
    """A decimal integer in [low, high]."""
    digits = text.removeprefix("-")
    if not digits or len(digits) > _MAX_DIGITS or not digits.isascii() or not digits.isdigit():
        raise FsError(errno.EINVAL, f"{what} must be an integer, not {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise FsError(errno.EINVAL, f"{what} must be between {low} and {high}, not {value}")
    return value


def path_id(request: web.Request, part: str) -> int:
    """An inode number, chunk id or version from the request's path: 1..MAX_ID."""
    return parse_int(request.match_info[part], part, 1, limits.MAX_ID)


def query_int(request: web.Request, name: str, default: int, low: int = 0, high: int = limits.MAX_ID) -> int:
    text = request.query.get(name)
    return default if text is None else parse_int(text, name, low, high)


def query_float(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    """A finite number, clamped into [low, high] (a time-out asked for beyond what the server
    allows is cut, not refused)."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text[:64])
    except ValueError:
        raise FsError(errno.EINVAL, f"{name} must be a number, not {text[:40]!r}") from None
    if not math.isfinite(value):
        raise FsError(errno.EINVAL, f"{name} must be a finite number")
    return min(high, max(low, value))


def token_header(request: web.Request, name: str) -> str:
    """A header that names something (a client, a request): empty, or a short ASCII token."""
    value = request.headers.get(name, "")
    if value and not limits.is_token(value):
        raise FsError(errno.EINVAL, f"{name} must be 1 to {limits.MAX_TOKEN_CHARS} of [0-9A-Za-z_.-]")
    return value


def client_id(request: web.Request) -> str:
    """The `X-Chunkfs-Client` of a request (empty: a client that does not follow the feed)."""
    return token_header(request, CLIENT_HEADER)


def request_id_header(request: web.Request) -> str:
    """The client's own `X-Request-Id` (empty if none), which the reply log keys replies by."""
    return token_header(request, request_id.HEADER)
