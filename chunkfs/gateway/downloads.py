"""A file as an HTTP answer (REST GET/HEAD and share links): ETag, Last-Modified, Range, and
the body streamed a chunk at a time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from chunkfs.client import AsyncFilesystem
from chunkfs.gateway.objects import describe_file
from chunkfs.gateway.streams import parse_range, read_body


async def file_response(request: Request, afs: AsyncFilesystem, path: str, st: os.stat_result,
                        bytes_out: Callable[[int], None], attachment: str | None = None) -> Response:
    """The file `path` (`st`: its stat) or the range asked for (206), opened as `afs`'s caller
    (so a read the namespace refuses is refused before any byte goes out). `attachment`: the
    name a browser saves it under."""
    info = await describe_file(afs, path, path, st)
    byte_range = parse_range(request.headers.get("range"), info.size)
    # a stored HTML file must not run as this origin (the file manager's): a sandboxed,
    # unsniffed answer has no origin, cookies or API of ours
    headers = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff",
               "ETag": f'"{info.etag}"', "Content-Length": str(info.size), "Accept-Ranges": "bytes",
               "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(info.mtime_ns / 1e9))}
    if attachment is not None:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(attachment, safe='')}"
    status = 200
    if byte_range is not None:
        headers.update({"Content-Range": byte_range.content_range(info.size), "Content-Length": str(byte_range.length)})
        status = 206
    afile = await afs.open(path, "rb")
    if request.method == "HEAD":
        await afile.aclose()
        return Response(headers=headers, status_code=status)
    return StreamingResponse(read_body(afile, byte_range, bytes_out), status_code=status,
                             headers=headers, media_type=info.content_type)
