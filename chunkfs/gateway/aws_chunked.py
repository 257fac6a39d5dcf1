"""`aws-chunked` request bodies: S3 clients streaming a body of unknown framing.

The body is a series of chunks `HEX-SIZE[;chunk-signature=SIG]\\r\\nDATA\\r\\n`, ending with a
chunk of size 0, then, in the trailer forms, trailer lines (`x-amz-checksum-crc32:...`) and an
empty line. The forms (the request's x-amz-content-sha256):
- STREAMING-AWS4-HMAC-SHA256-PAYLOAD: each chunk signed, each signature chained to the one
  before it, the first to the request's own signature; a chunk whose signature is wrong ends
  the upload with SignatureDoesNotMatch (and nothing is stored);
- STREAMING-UNSIGNED-PAYLOAD-TRAILER: chunks unsigned, a checksum trailer at the end
  (what boto3 >= 1.36 sends by default);
- STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: signed chunks and a trailer (the trailer's own
  signature is not checked yet; its checksum is).
A trailer's checksum is checked against the data (`checksums.py`): a mismatch is BadDigest.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from chunkfs.gateway import sigv4
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.s3_errors import S3Error

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_FORMS = (SIGNED, SIGNED_TRAILER, UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_CHUNK_HEADER_BYTES = 4096


def _incomplete() -> S3Error:
    return S3Error("IncompleteBody", "the aws-chunked body ended before its last chunk")


class ChunkedBody:
    """Decodes one aws-chunked body (`data()`), checking signatures as it goes."""

    def __init__(self, body: AsyncIterator[bytes], verified: sigv4.Verified, checksums: BodyChecksums) -> None:
        self._body = body
        self._verified = verified
        self._signed = verified.payload_hash in (SIGNED, SIGNED_TRAILER)
        self._previous_signature = verified.seed_signature
        self._checksums = checksums
        self._buffer = bytearray()
        self._ended = False

    async def _fill(self, need: int) -> None:
        while len(self._buffer) < need and not self._ended:
            try:
                self._buffer += await self._body.__anext__()
            except StopAsyncIteration:
                self._ended = True
        if len(self._buffer) < need:
            raise _incomplete()

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_CHUNK_HEADER_BYTES:
                raise S3Error("InvalidRequest", "an aws-chunked chunk header is too long")
            await self._fill(len(self._buffer) + 1)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _check_signature(self, data: bytes | bytearray, signature: str) -> None:
        v = self._verified
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", v.timestamp, v.scope, self._previous_signature,
                             EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        if sigv4.sign(v.signing_key, to_sign) != signature:
            raise S3Error("SignatureDoesNotMatch", "a chunk signature of the aws-chunked body does not match")
        self._previous_signature = signature

    async def data(self) -> AsyncIterator[bytes]:
        """The decoded bytes, chunk by chunk; raises S3Error on a bad body."""
        while True:
            header = (await self._line()).decode("latin-1")
            size_text, _, extension = header.partition(";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise S3Error("InvalidRequest", f"bad aws-chunked chunk header {header[:60]!r}") from None
            await self._fill(size + 2)
            data = bytes(self._buffer[:size])
            if self._buffer[size: size + 2] != b"\r\n" and size > 0:
                raise S3Error("InvalidRequest", "an aws-chunked chunk does not end with CRLF")
            del self._buffer[: size + 2 if size > 0 else 0]
            if self._signed:
                name, _, signature = extension.partition("=")
                if name.strip() != "chunk-signature":
                    raise S3Error("SignatureDoesNotMatch", "an aws-chunked chunk has no signature")
                self._check_signature(data, signature.strip())
            if size == 0:
                await self._trailers()
                return
            yield data

    async def _trailers(self) -> None:
        trailers: dict[str, str] = {}
        while True:
            try:
                line = (await self._line()).decode("latin-1")
            except S3Error:
                break  # no trailer section at all: the body ended after the last chunk
            if not line:
                break
            name, _, value = line.partition(":")
            trailers[name.strip().lower()] = value.strip()
        trailers.pop("x-amz-trailer-signature", None)
        self._checksums.check_trailers(trailers)
