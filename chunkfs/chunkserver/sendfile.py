"""A response whose body is a range of an open file, sent with the kernel's sendfile: the bytes
go from the page cache to the socket without passing through this process."""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

FALLBACK_PIECE_BYTES = 1 << 20


class FileRangeResponse(web.StreamResponse):
    """`count` bytes of `file` from `offset`; the response owns the file and closes it once sent
    (or if it never is)."""

    def __init__(self, file: BinaryIO, offset: int, count: int) -> None:
        super().__init__(headers={"Content-Type": "application/octet-stream"})
        self._file, self._offset, self._count = file, offset, count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            if self._count and writer is not None and request.method != "HEAD":
                await self._send(request, writer)
                await super().write_eof()
            return writer
        finally:
            self._file.close()

    async def _send(self, request: web.BaseRequest, writer: AbstractStreamWriter) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            await asyncio.get_running_loop().sendfile(transport, self._file, self._offset, self._count)
        except NotImplementedError:  # a transport without sendfile (TLS): read and write
            sent = 0
            while sent < self._count:
                piece = await asyncio.to_thread(os.pread, self._file.fileno(),
                                                min(FALLBACK_PIECE_BYTES, self._count - sent), self._offset + sent)
                if not piece:
                    raise ConnectionResetError("file shorter than its range") from None
                await writer.write(piece)
                sent += len(piece)
