"""Chunk access tokens: a chunkserver reads, writes or deletes a chunk version only for a token
the metaserver issued for it, to the client it issued it to (as HDFS's block tokens).

A token is `<ops>.<chunk>.<first>.<last>.<expires>.<holder>.<mac>`: the operations it allows (`r`
read, `w` write, `d` delete), the chunk id (`*`: any, for the versions a client reserved, which
are its alone), the versions `first..last` it covers, the unix second it expires at, whom it was
issued to (`holder`: the key id of the credential that asked, `cluster` for the cluster secret,
`chunkservers` for the replicator's copies), and HMAC-SHA256(chunk key, everything before the
mac), truncated to 128 bits. The chunk key is shared by the metaserver and the chunkservers only:
derived by the metaserver from the cluster secret (`chunk_key`) and handed to each chunkserver in
the answer to its registration, wrapped with the key the chunkserver signed that registration
with (`wrap`), so nobody reading the wire learns it and no client, gateway or admin key can make
a token.

A token is bound to its holder: a request presenting it must be signed (`chunkfs.auth`) with the
holder's token key, HMAC(chunk key, holder) (`holder_key`), under the key id `T-<holder>`
(`holder_key_id`). The metaserver gives a client its token key once, wrapped with the client's
own credential key (the `token_key` call), so only the holder of that credential can unwrap it;
a chunkserver derives it from the chunk key. So a token read off the wire (without TLS), from a
log, or from another client is worth nothing to anyone else, and the signature's nonce makes a
captured request good for one use (`auth.ReplayGuard`). A chunkserver checks both without a call:
the token (parse, compare, one HMAC of ~70 bytes), then the request's signature (one HMAC over the
canonical request, and the holder's key, an HMAC kept in a small table).

What a token is worth: a client gets read tokens with the layout of a file it opens (one per
chunk version, with the locations), a read-and-write token with each block of versions it
reserves (its uploads, and reading them back), and asks the metaserver again for a token that
expired (`tokens`, which issues only for versions some file references). Replication between
chunkservers carries a read token the metaserver issued to the chunkservers for the copy. Within
its lifetime a token serves its holder for the same operation on the same versions only (the
requests are idempotent: a version is written once, with its checksum).

Cost, on the hot path of every chunk request (`python -m chunkfs.chunk_tokens`, CPU time, on a
shared 2-core machine at load 10-16, so noisy): checking a token took 5.3-8.6 us and issuing one
4.0-6.7 us before tokens were bound; the bound check (token and signature) and the client's
signing are measured by the same command (README, "Security").
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import time

from chunkfs import auth
from chunkfs.errors import FsError

METASERVER_KEY_ID = "metaserver"  # the key id the metaserver signs its requests to chunkservers with
TOKEN_HEADER = "X-Chunkfs-Token"
BASE_TOKEN_HEADER = "X-Chunkfs-Base-Token"  # a partial write's: a read token of the version it patches
READ, WRITE, DELETE = "r", "w", "d"
ANY_CHUNK = "*"
CLUSTER_HOLDER = "cluster"  # tokens asked for with the cluster secret (which has no key id)
CHUNKSERVERS_HOLDER = "chunkservers"  # the replicator's copy tokens, presented by the copying chunkserver
HOLDER_PREFIX = "T-"  # a token key's key id: T-<holder>
HOLDER_ROLE = "token holder"  # the role a request signed with a token key is verified as
DEFAULT_TTL_S = 600.0
REFRESH_MARGIN_S = 30.0  # a client asks for a new token this long before its own expires
_MAC_HEX = 32
_HOLDER = r"[0-9A-Za-z_-]{1,38}"
_FORMAT = re.compile(r"([rwd]{1,3})\.(\*|\d{1,19})\.(\d{1,19})\.(\d{1,19})\.(\d{1,12})\.(" + _HOLDER
                     + r")\.([0-9a-f]{32})")
_KEY_LABEL = b"chunkfs chunk-token key"
_WRAP_LABEL = b"chunkfs chunk-token key wrap "
_HOLDER_LABEL = b"chunkfs chunk-token holder "


def chunk_key(cluster_secret: bytes) -> bytes:
    """The key tokens are made with (hex, as bytes), from the metaserver's cluster secret. The
    metaserver signs its own requests to chunkservers with it too (`metaserver_credential`)."""
    return hmac.digest(cluster_secret, _KEY_LABEL, "sha256").hex().encode()


def metaserver_credential(key: bytes) -> bytes:
    """What the metaserver signs its requests to chunkservers with (an `auth` credential)."""
    return f"ck1:{METASERVER_KEY_ID}:{key.decode()}".encode()


def holder_of(key_id: str) -> str:
    """The holder a token issued to the signer of a request is bound to (`SignedRequest.key_id`)."""
    return key_id or CLUSTER_HOLDER


def holder_key_id(holder: str) -> str:
    return HOLDER_PREFIX + holder


def holder_key(key: bytes, holder: str) -> bytes:
    """The key `holder` signs its chunk requests with (hex, as bytes)."""
    return hmac.digest(key, _HOLDER_LABEL + holder.encode(), "sha256").hex().encode()


def holder_credential(key: bytes, holder: str) -> bytes:
    """What `holder` signs the requests presenting its tokens with (an `auth` credential)."""
    return auth.credential_text(holder_key_id(holder), holder_key(key, holder).decode()).encode()


class HolderKeys:
    """A chunkserver's `auth.KeyRing` part for token holders: the key of `T-<holder>`, derived
    from the chunk key, kept in a table of at most `max_keys` (cleared when full: a holder's
    key costs one HMAC to derive again)."""

    def __init__(self, key: bytes, max_keys: int = 10_000) -> None:
        self.chunk_key, self.max_keys = key, max_keys
        self._keys: dict[str, bytes] = {}

    def key(self, key_id: str) -> tuple[bytes, str] | None:
        found = self._keys.get(key_id)
        if found is None:
            if not key_id.startswith(HOLDER_PREFIX) or len(key_id) == len(HOLDER_PREFIX):
                return None
            if len(self._keys) >= self.max_keys:
                self._keys.clear()
            found = self._keys[key_id] = holder_key(self.chunk_key, key_id[len(HOLDER_PREFIX):])
        return found, HOLDER_ROLE


def _mac(key: bytes, body: str) -> str:
    return hmac.digest(key, body.encode(), "sha256").hex()[:_MAC_HEX]


class TokenIssuer:
    """The metaserver's side: makes tokens valid for `ttl_s`."""

    def __init__(self, key: bytes, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.key, self.ttl_s = key, ttl_s

    def issue(self, ops: str, chunk_id: int | None, first_version: int, last_version: int | None = None, *,
              holder: str, now: float | None = None) -> str:
        """A token for `ops` on the versions, for `holder` alone (`holder_of` the caller's key id)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        chunk = ANY_CHUNK if chunk_id is None else str(chunk_id)
        last = first_version if last_version is None else last_version
        body = f"{ops}.{chunk}.{first_version}.{last}.{expires}.{holder}"
        return f"{body}.{_mac(self.key, body)}"

    def holder_key(self, holder: str) -> bytes:
        return holder_key(self.key, holder)


def refusal(key: bytes, token: str, op: str, chunk_id: int, version: int, now: float | None = None
            ) -> FsError | str:
    """The key id the request presenting `token` must be signed with (its holder's) if `token`
    allows `op` on the chunk version, else why not (EKEYEXPIRED: ask the metaserver for a new
    one; EACCES: it was never good for this)."""
    match = _FORMAT.fullmatch(token)
    if match is None:
        return FsError(errno.EACCES, "not a chunk token")
    ops, chunk, first, last, expires, holder, mac = match.groups()
    body = token[: -_MAC_HEX - 1]
    if not hmac.compare_digest(mac, _mac(key, body)):
        return FsError(errno.EACCES, "the chunk token was not issued by this cluster's metaserver")
    if op not in ops or (chunk != ANY_CHUNK and int(chunk) != chunk_id) or not int(first) <= version <= int(last):
        return FsError(errno.EACCES, f"the chunk token is not for {op} of chunk {chunk_id} v{version}")
    if int(expires) < (time.time() if now is None else now):
        return FsError(errno.EKEYEXPIRED, "the chunk token expired")
    return holder_key_id(holder)


def expires_at(token: str) -> float:
    """When the token expires (0 for none, or one not understood): for a client to renew it."""
    match = _FORMAT.fullmatch(token)
    return float(match.group(5)) if match else 0.0


def wrap(secret_hex: bytes, wrapping_key: bytes) -> tuple[str, str]:
    """(nonce, wrapped) for sending a key (the chunk key to a chunkserver, a token key to a
    client): XOR with HMAC(its own key, nonce), a one-time pad a fresh nonce makes new every time."""
    nonce = os.urandom(16).hex()
    pad = hashlib.sha512(hmac.digest(wrapping_key, _WRAP_LABEL + nonce.encode(), "sha256")).digest()
    return nonce, bytes(a ^ b for a, b in zip(secret_hex, pad, strict=False)).hex()


def unwrap(nonce: str, wrapped: str, wrapping_key: bytes) -> bytes:
    pad = hashlib.sha512(hmac.digest(wrapping_key, _WRAP_LABEL + nonce.encode(), "sha256")).digest()
    return bytes(a ^ b for a, b in zip(bytes.fromhex(wrapped), pad, strict=False))


def _measure() -> None:
    """CPU time of issuing a token, of checking one alone, and of what a chunk request costs
    with tokens bound to their holder: the client's signature, the chunkserver's check of the
    token and of the signature (with the replay guard)."""
    key = chunk_key(b"x" * 32)
    issuer = TokenIssuer(key)
    holder = "K" + "ab" * 10
    n = 50_000
    started = time.process_time()
    tokens = [issuer.issue(READ, 12345, 678901, holder=holder) for _ in range(n)]
    issued = time.process_time() - started
    started = time.process_time()
    for token in tokens:
        assert isinstance(refusal(key, token, READ, 12345, 678901), str)
    checked = time.process_time() - started
    address, target = "127.0.0.1:9521", "/v1/chunks/12345/678901"
    credential = holder_credential(key, holder)
    started = time.process_time()
    signed = []
    for token in tokens:
        headers = [("Host", address), (TOKEN_HEADER, token)]
        signed.append((headers, auth.sign(credential, "GET", target, address, headers, b"")))
    signing = time.process_time() - started

    verifier = auth.Verifier(HolderKeys(key), auth.ReplayGuard(max_nonces=2 * n, started_at=0))
    started = time.process_time()
    for headers, header in signed:
        expected = refusal(key, headers[1][1], READ, 12345, 678901)
        request = verifier.check_head("GET", target, address, headers, header)
        assert request is not None and request.key_id == expected and verifier.first_use(request)
    bound = time.process_time() - started
    print(f"issue {issued / n * 1e6:.2f} us, check the token alone {checked / n * 1e6:.2f} us, "
          f"client's signature {signing / n * 1e6:.2f} us, chunkserver's bound check (token, signature, "
          f"holder key, nonce) {bound / n * 1e6:.2f} us (CPU, {n} requests)")


if __name__ == "__main__":
    _measure()
