"""Digests of an uploaded body: the MD5 every object's ETag is, and the checks the client asked
for (Content-MD5, a hex x-amz-content-sha256, x-amz-checksum-* in a header or a trailer).

The checksums that held are stored with the object (`user.s3.checksum.ALGORITHM` xattrs) and
returned with GetObject/HeadObject when the client asks (`x-amz-checksum-mode: ENABLED`), so
an SDK checks the body it downloads against what it uploaded.

Every check happens before the object is renamed into place: a mismatch raises S3Error
(BadDigest, XAmzContentSHA256Mismatch) and the staged file is dropped, so nothing is stored.
CRC32, CRC32C, CRC64NVME, SHA-1 and SHA-256 checksums are checked (the CRCs S3 clients use
beside zlib's CRC32 come from awscrt, the AWS common runtime's C code that botocore itself
uses for them, hardware-accelerated). A checksum header of an algorithm not among these is
InvalidRequest, as S3 answers it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib

import awscrt.checksums
from collections.abc import Callable, Mapping
from typing import Protocol

from chunkfs.gateway.s3_errors import S3Error


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _AwsCrc:
    """CRC32C or CRC64NVME (awscrt's), big-endian as S3 encodes them."""

    def __init__(self, function: Callable[[bytes, int], int], width_bytes: int) -> None:
        self.function, self.width_bytes, self.value = function, width_bytes, 0

    def update(self, data: bytes) -> None:
        self.value = self.function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width_bytes, "big")


CHECKED_ALGORITHMS: dict[str, Callable[[], _Digest]] = {
    "crc32": _Crc32, "crc32c": lambda: _AwsCrc(awscrt.checksums.crc32c, 4),
    "crc64nvme": lambda: _AwsCrc(awscrt.checksums.crc64nvme, 8), "sha1": hashlib.sha1, "sha256": hashlib.sha256}
TUS_ALGORITHMS: dict[str, Callable[[], _Digest]] = {"md5": hashlib.md5, **CHECKED_ALGORITHMS}
HEADER_PREFIX = "x-amz-checksum-"


class BodyChecksums:
    """Fed every byte of the body in order; `finish()` checks what the headers promised."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.md5 = hashlib.md5()
        self._content_md5 = headers.get("content-md5")
        payload = headers.get("x-amz-content-sha256", "")
        self._content_sha256 = payload.lower() if len(payload) == 64 else None
        self._sha256 = hashlib.sha256() if self._content_sha256 else None
        self._expected: dict[str, str] = {}
        self.verified: dict[str, str] = {}  # algorithm -> base64 value, of the checks that held
        self._digests: dict[str, _Digest] = {}
        for name, value in headers.items():
            if name.startswith(HEADER_PREFIX) and name != HEADER_PREFIX + "algorithm" \
                    and not name.endswith("-type"):
                self._expect(name[len(HEADER_PREFIX):], value)
        for name in headers.get("x-amz-trailer", "").split(","):
            name = name.strip().lower()
            if name.startswith(HEADER_PREFIX):
                self._expect(name[len(HEADER_PREFIX):], None)

    def _expect(self, algorithm: str, value: str | None) -> None:
        if algorithm not in CHECKED_ALGORITHMS:
            raise S3Error("InvalidRequest", f"the checksum algorithm {algorithm!r} is not supported")
        self._digests[algorithm] = CHECKED_ALGORITHMS[algorithm]()
        if value is not None:
            self._expected[algorithm] = value

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        for digest in self._digests.values():
            digest.update(data)

    def check_trailers(self, trailers: Mapping[str, str]) -> None:
        for name, value in trailers.items():
            if name.startswith(HEADER_PREFIX) and name[len(HEADER_PREFIX):] in self._digests:
                self._expected[name[len(HEADER_PREFIX):]] = value

    def finish(self) -> str:
        """The body's MD5 (hex) once every promised digest matched."""
        md5 = self.md5.digest()
        if self._content_md5 is not None:
            try:
                given = base64.b64decode(self._content_md5, validate=True)
            except binascii.Error:
                raise S3Error("InvalidDigest", "the Content-MD5 you specified is not valid") from None
            if given != md5:
                raise S3Error("BadDigest", "the Content-MD5 you specified did not match what we received")
        if self._sha256 is not None and self._sha256.hexdigest() != self._content_sha256:
            raise S3Error("XAmzContentSHA256Mismatch",
                          "the provided x-amz-content-sha256 header does not match what was computed")
        for algorithm, expected in self._expected.items():
            if base64.b64encode(self._digests[algorithm].digest()).decode() != expected:
                raise S3Error("BadDigest", f"the {algorithm.upper()} you specified did not match the calculated checksum")
            self.verified[algorithm] = expected
        return md5.hex()
