"""TLS over a trio socket for the mount's transport, lean enough for chunk bodies.

`trio.SSLStream` drives OpenSSL one TLS record (16 KiB) at a time through locks and checkpoints:
measured here, a cold 4 MiB-chunk read through it cost the mount ~4.4x the CPU of plain HTTP and
ran at 0.19x the speed. This drives an `ssl.SSLObject` over memory BIOs directly: the socket is
read in pieces of up to 1 MiB, and every record they hold is decrypted, without awaiting, straight
into the caller's buffer (`receive_into`: no copy of a chunk body beyond OpenSSL's own). One task
at a time per direction, as the transport uses a connection (one exchange at a time).
"""

from __future__ import annotations

import ssl
from typing import cast

import trio

RAW_RECEIVE_BYTES = 1 << 20
# Encrypting and copying out a 4 MiB chunk took 3.2 ms of CPU whole, 2.3-2.6 ms in pieces of
# 64-256 KiB (TLS 1.3, AES-256-GCM over memory BIOs, at load 16 on the shared 2-core machine)
SEND_PIECE_BYTES = 256 << 10


class TlsSocketStream(trio.abc.AsyncResource):
    def __init__(self, raw: trio.SocketStream, context: ssl.SSLContext, server_hostname: str) -> None:
        self.raw = raw
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                     server_hostname=server_hostname)

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("the server closed the connection in the TLS handshake") from None
        await self._flush()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypted and sent SEND_PIECE_BYTES at a time: OpenSSL's output buffer and the copy
        out of it stay small (a whole 4 MiB chunk at once cost ~30% more CPU, see SEND_PIECE_BYTES)."""
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE_BYTES):
            self._tls.write(view[start:start + SEND_PIECE_BYTES])
            await self._flush()

    async def receive_some(self, max_bytes: int = RAW_RECEIVE_BYTES) -> bytes:
        """Up to `max_bytes` decrypted bytes, at least one; b"" at the end of the stream."""
        buffer = bytearray(max_bytes)
        n = await self.receive_into(memoryview(buffer))
        return bytes(buffer[:n])

    async def receive_into(self, view: memoryview) -> int:
        """Decrypts into `view` all it can without waiting once something arrived; 0 at the end."""
        received = 0
        while received < len(view):
            try:
                # with a buffer, read() answers the count (typeshed says bytes)
                n = cast(int, self._tls.read(len(view) - received, view[received:]))
            except ssl.SSLWantReadError:
                if received:
                    return received
                await self._flush()
                if not await self._fill():
                    return 0
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return received
            if n == 0:
                return received
            received += n
        return received

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            await self.raw.send_all(pending)

    async def _fill(self) -> bool:
        data = await self.raw.receive_some(RAW_RECEIVE_BYTES)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def aclose(self) -> None:
        await self.raw.aclose()
