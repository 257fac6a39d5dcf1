"""Chunk access tokens: a chunkserver reads, writes or deletes a chunk version only for a token
the metaserver issued for it (as HDFS's block tokens).

A token is `<ops>.<chunk>.<first>.<last>.<expires>.<mac>`: the operations it allows (`r` read,
`w` write, `d` delete), the chunk id (`*`: any, for the versions a client reserved, which are its
alone), the versions `first..last` it covers, the unix second it expires at, and
HMAC-SHA256(chunk key, everything before the mac), truncated to 128 bits. The chunk key is shared
by the metaserver and the chunkservers only: derived by the metaserver from the cluster secret
(`chunk_key`) and handed to each chunkserver in the answer to its registration, wrapped with the
key the chunkserver signed that registration with (`wrap`), so nobody reading the wire learns it
and no client, gateway or admin key can make a token. A chunkserver checks a token without a
call: parse, compare, one HMAC of ~60 bytes.

What a token is worth: a client gets read tokens with the layout of a file it opens (one per
chunk version, with the locations), a read-and-write token with each block of versions it
reserves (its uploads, and reading them back), and asks the metaserver again for a token that
expired (`tokens`, which issues only for versions some file references). Replication between
chunkservers carries a read token the metaserver issued for the copy. A token is not tied to a
connection or a nonce: within its lifetime it can be used again, for the same operation on the
same versions only (the requests are idempotent: a version is written once, with its checksum).

Cost, on the hot path of every chunk request (`python -m chunkfs.chunk_tokens`, CPU time over
100,000 tokens, on a shared 2-core machine at load 10-16, so noisy): checking a token took 5.3-8.6
us and issuing one 4.0-6.7 us. A chunk request with a token is sent unsigned, so it saves the
client the request signature (with the server's check, ~26 us of CPU a request by the README's
figure), and a loopback round trip is ~300 us; an open issues one token per chunk of the file.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import time

from chunkfs.errors import FsError

METASERVER_KEY_ID = "metaserver"  # the key id the metaserver signs its requests to chunkservers with
TOKEN_HEADER = "X-Chunkfs-Token"
BASE_TOKEN_HEADER = "X-Chunkfs-Base-Token"  # a partial write's: a read token of the version it patches
READ, WRITE, DELETE = "r", "w", "d"
ANY_CHUNK = "*"
DEFAULT_TTL_S = 600.0
REFRESH_MARGIN_S = 30.0  # a client asks for a new token this long before its own expires
_MAC_HEX = 32
_FORMAT = re.compile(r"([rwd]{1,3})\.(\*|\d{1,19})\.(\d{1,19})\.(\d{1,19})\.(\d{1,12})\.([0-9a-f]{32})")
_KEY_LABEL = b"chunkfs chunk-token key"
_WRAP_LABEL = b"chunkfs chunk-token key wrap "


def chunk_key(cluster_secret: bytes) -> bytes:
    """The key tokens are made with (hex, as bytes), from the metaserver's cluster secret. The
    metaserver signs its own requests to chunkservers with it too (`metaserver_credential`)."""
    return hmac.digest(cluster_secret, _KEY_LABEL, "sha256").hex().encode()


def metaserver_credential(key: bytes) -> bytes:
    """What the metaserver signs its requests to chunkservers with (an `auth` credential)."""
    return f"ck1:{METASERVER_KEY_ID}:{key.decode()}".encode()


def _mac(key: bytes, body: str) -> str:
    return hmac.digest(key, body.encode(), "sha256").hex()[:_MAC_HEX]


class TokenIssuer:
    """The metaserver's side: makes tokens valid for `ttl_s`."""

    def __init__(self, key: bytes, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.key, self.ttl_s = key, ttl_s

    def issue(self, ops: str, chunk_id: int | None, first_version: int, last_version: int | None = None,
              now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        chunk = ANY_CHUNK if chunk_id is None else str(chunk_id)
        body = f"{ops}.{chunk}.{first_version}.{first_version if last_version is None else last_version}.{expires}"
        return f"{body}.{_mac(self.key, body)}"


def refusal(key: bytes, token: str, op: str, chunk_id: int, version: int, now: float | None = None
            ) -> FsError | None:
    """None if `token` allows `op` on the chunk version, else why not (EKEYEXPIRED: ask the
    metaserver for a new one; EACCES: it was never good for this)."""
    match = _FORMAT.fullmatch(token)
    if match is None:
        return FsError(errno.EACCES, "not a chunk token")
    ops, chunk, first, last, expires, mac = match.groups()
    body = token[: -_MAC_HEX - 1]
    if not hmac.compare_digest(mac, _mac(key, body)):
        return FsError(errno.EACCES, "the chunk token was not issued by this cluster's metaserver")
    if op not in ops or (chunk != ANY_CHUNK and int(chunk) != chunk_id) or not int(first) <= version <= int(last):
        return FsError(errno.EACCES, f"the chunk token is not for {op} of chunk {chunk_id} v{version}")
    if int(expires) < (time.time() if now is None else now):
        return FsError(errno.EKEYEXPIRED, "the chunk token expired")
    return None


def expires_at(token: str) -> float:
    """When the token expires (0 for none, or one not understood): for a client to renew it."""
    match = _FORMAT.fullmatch(token)
    return float(match.group(5)) if match else 0.0


def wrap(chunk_key_hex: bytes, wrapping_key: bytes) -> tuple[str, str]:
    """(nonce, wrapped) for sending the chunk key to a chunkserver: XOR with HMAC(its key, nonce),
    a one-time pad a fresh nonce makes new every time."""
    nonce = os.urandom(16).hex()
    pad = hashlib.sha512(hmac.digest(wrapping_key, _WRAP_LABEL + nonce.encode(), "sha256")).digest()
    return nonce, bytes(a ^ b for a, b in zip(chunk_key_hex, pad, strict=False)).hex()


def unwrap(nonce: str, wrapped: str, wrapping_key: bytes) -> bytes:
    pad = hashlib.sha512(hmac.digest(wrapping_key, _WRAP_LABEL + nonce.encode(), "sha256")).digest()
    return bytes(a ^ b for a, b in zip(bytes.fromhex(wrapped), pad, strict=False))


def _measure() -> None:
    key = chunk_key(b"x" * 32)
    issuer = TokenIssuer(key)
    n = 100_000
    started = time.process_time()
    tokens = [issuer.issue(READ, 12345, 678901) for _ in range(n)]
    issued = time.process_time() - started
    started = time.process_time()
    for token in tokens:
        assert refusal(key, token, READ, 12345, 678901) is None
    checked = time.process_time() - started
    print(f"issue {issued / n * 1e6:.2f} us, check {checked / n * 1e6:.2f} us (CPU, {n} tokens)")


if __name__ == "__main__":
    _measure()
