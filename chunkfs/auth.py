"""Request authentication: every request carries an HMAC of all of itself, usable once.

A request carries `X-Chunkfs-Auth: [<key-id>:]<unix-seconds>.<nonce>.<body-digest>.<hmac>`, where
`hmac` is HMAC-SHA256 keyed with the sender's key over the canonical request (`canonical_request`).
The key is the cluster secret (no key id: the set-up of one secret for everything, which may do
anything) or a role credential (`Credential`: a key id the server looks up in its `KeyRing`, which
tells it the key and the role; see `chunkfs.credentials`). A secret file holds either: a
credential is written `ck1:<key-id>:<key>`, so every daemon's `--secret-file` takes both.
The canonical request:

    METHOD
    path                       as sent, percent-encoding and all
    query                      as sent (empty if none)
    host                       the Host header, lower-cased
    name:value                 one line per X-Chunkfs-* header and X-Request-Id, names lower-cased,
    ...                        sorted (the auth header itself excepted)
    body-digest                sha256 of the body (hex), or "x-chunkfs-checksum" (below)
    unix-seconds
    nonce                      24 hex digits: 96 random bits, new for every attempt

So a captured signature is worth nothing for another method, path, query, server, chunkfs header,
request id or body, and the server refuses it also for the same request a second time: a nonce
seen within the skew window is refused (`ReplayGuard`). A request older or newer than
`MAX_SKEW_S` is refused too, which is how long a nonce must be remembered.

The body of a chunk PUT (a PUT carrying `X-Chunkfs-Checksum`) is bound by that header instead of
a second hash of its 4 MiB: the header is signed, and the chunkserver stores the bytes only if
they match it. That binding is as strong as the checksum (xxh3-128, not a cryptographic hash)
against someone who can change a request in flight; replay needs a fresh nonce either way.

`sign` is the one signing function (the clients and the tests use it, given everything a request
carries); `Verifier` is the server's side.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import deque
from pathlib import Path
from collections.abc import Iterable
from typing import Protocol

HEADER = "X-Chunkfs-Auth"
CHECKSUM_HEADER = "X-Chunkfs-Checksum"  # a chunk's checksum, which the chunkserver verifies
CHECKSUMMED = "x-chunkfs-checksum"  # the body digest of a body bound by its checksum header
MAX_SKEW_S = 300
NONCE_BYTES = 12
_SIGNED_PREFIX = "x-chunkfs-"
_ALSO_SIGNED = frozenset({"x-request-id"})  # the reply log answers retries by it
_AUTH_LOWER = HEADER.lower()
CREDENTIAL_PREFIX = "ck1:"
KEY_ID = re.compile(r"[0-9A-Za-z_-]{1,40}")
CLUSTER_ROLE = "cluster"  # the role of the cluster secret: every route (the set-up before roles)
_HEADER_FORMAT = re.compile(r"(?:(" + KEY_ID.pattern + r"):)?(\d{1,12})\.([0-9a-f]{24})\.([0-9a-f]{64}|" + CHECKSUMMED + r")\.([0-9a-f]{64})")


def create_secret(path: Path) -> bytes:
    """Write a new random secret to `path` (mode 0600) unless one is already there."""
    if path.exists():
        return load_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret.encode()


def load_secret(path: Path | str) -> bytes:
    """The secret file's content: a cluster secret, or a credential (`ck1:<key-id>:<key>`, which
    `sign` recognises and signs with under its key id)."""
    secret = Path(path).read_text().strip().encode()
    if len(secret) < 16:
        raise ValueError(f"cluster secret in {path} is too short (need at least 16 characters)")
    if secret.startswith(CREDENTIAL_PREFIX.encode()) and split_credential(secret)[0] is None:
        raise ValueError(f"{path} is not a credential (ck1:KEY-ID:KEY)")
    return secret


@functools.lru_cache(maxsize=16)
def split_credential(secret: bytes) -> tuple[str | None, bytes]:
    """(key id, key) of what a secret file holds: (None, the secret) for a cluster secret."""
    if not secret.startswith(CREDENTIAL_PREFIX.encode()):
        return None, secret
    key_id, _, key = secret.decode(errors="replace")[len(CREDENTIAL_PREFIX):].partition(":")
    if not KEY_ID.fullmatch(key_id) or len(key) < 16:
        return None, secret
    return key_id, key.encode()


def credential_text(key_id: str, key: str) -> str:
    """What a credential's holder puts in its secret file."""
    return f"{CREDENTIAL_PREFIX}{key_id}:{key}"


def body_digest(method: str, headers: Iterable[tuple[str, str]], body: bytes | None) -> str:
    """What the signature says of the body: CHECKSUMMED for a chunk PUT, else its sha256."""
    if method.upper() == "PUT" and any(name.lower() == CHECKSUM_HEADER.lower() for name, _ in headers):
        return CHECKSUMMED
    return hashlib.sha256(body or b"").hexdigest()


def canonical_request(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                      digest: str, ts: str, nonce: str) -> bytes:
    """The bytes the HMAC is over (see the module's docstring); `target` is path?query."""
    path, _, query = target.partition("?")
    signed = []
    for name, value in headers:
        lower = name.lower()
        if (lower.startswith(_SIGNED_PREFIX) and lower != _AUTH_LOWER) or lower in _ALSO_SIGNED:
            signed.append(f"{lower}:{value}")
    signed.sort()
    return "\n".join((method.upper(), path, query, host.lower(), *signed, digest, ts, nonce)).encode(
        "utf-8", "surrogateescape")


def sign(secret: bytes, method: str, target: str, host: str, headers: Iterable[tuple[str, str]] = (),
         body: bytes | None = None, *, digest: str | None = None, now: float | None = None,
         nonce: str | None = None) -> str:
    """The `X-Chunkfs-Auth` value for a request: `target` is path?query as sent, `host` the Host
    header, `headers` all the others it carries (those not signed are skipped), `body` its body
    (or `digest`, its `body_digest` if already known: a retry need not hash it again).
    Call it once per attempt: every call takes a new nonce (`nonce` and `now` are for tests).
    `secret` is what a secret file holds: a credential is signed with its key under its key id."""
    key_id, secret = split_credential(secret)
    headers = list(headers)
    ts = str(int(now if now is not None else time.time()))
    nonce = nonce or secrets.token_hex(NONCE_BYTES)
    digest = digest or body_digest(method, headers, body)
    mac = hmac.digest(secret, canonical_request(method, target, host, headers, digest, ts, nonce), "sha256")
    return f"{key_id + ':' if key_id else ''}{ts}.{nonce}.{digest}.{mac.hex()}"


class SignedRequest:
    """An `X-Chunkfs-Auth` value taken apart (`parse`), before anything is believed of it."""

    __slots__ = ("digest", "key_id", "mac", "nonce", "role", "ts")

    def __init__(self, key_id: str | None, ts: str, nonce: str, digest: str, mac: str) -> None:
        self.key_id = key_id or ""  # "": the cluster secret
        self.ts, self.nonce, self.digest, self.mac = ts, nonce, digest, mac
        self.role = ""  # the signer's, once the signature is checked (`Verifier.check_head`)

    @classmethod
    def parse(cls, header: str | None) -> SignedRequest | None:
        match = _HEADER_FORMAT.fullmatch(header) if header else None
        return cls(*match.groups()) if match else None

    def mac_matches(self, secret: bytes, method: str, target: str, host: str,
                    headers: Iterable[tuple[str, str]]) -> bool:
        """Whether the HMAC is right for this request with the body digest the header claims
        (the caller checks the body against `digest`)."""
        expected = hmac.digest(secret, canonical_request(method, target, host, headers, self.digest, self.ts,
                                                         self.nonce), "sha256").hex()
        return hmac.compare_digest(self.mac, expected)

    def body_matches(self, body: bytes) -> bool:
        return self.digest != CHECKSUMMED and hmac.compare_digest(self.digest, hashlib.sha256(body).hexdigest())


class ReplayGuard:
    """The nonces of accepted requests, so that each request is accepted once.

    A request is accepted only while its timestamp is within MAX_SKEW_S of now, so a nonce need be
    remembered only 2 * MAX_SKEW_S after it was seen. Memory is bounded: at most `max_nonces`
    (200,000 by default, about 40 MB at ~200 bytes each). When full, the oldest nonce is dropped
    and every request signed no later than it is refused from then on (`floor_ts`), so a dropped
    nonce can never be replayed. Under a load beyond max_nonces / (2 * MAX_SKEW_S) requests a second
    (333/s by default) the window a request must arrive in thereby shrinks from MAX_SKEW_S to how
    long the guard holds (40 s at 5,000 requests a second): clients sign just before sending, so
    only a client whose clock is that far behind the server's is refused. A restarted server
    knows no nonce of its previous run, so it refuses every request signed before it started."""

    def __init__(self, max_nonces: int = 200_000, skew_s: int = MAX_SKEW_S, started_at: float | None = None) -> None:
        self.max_nonces = max_nonces
        self.skew_s = skew_s
        # requests signed at or before this second are refused: from the start, those signed
        # before the second the server started (nonces a previous run saw are not known here)
        self.floor_ts = int(time.time() if started_at is None else started_at) - 1
        self._ts: dict[str, int] = {}  # nonce -> its request's timestamp
        self._expiry: deque[tuple[float, str]] = deque()  # (forget at, nonce), in the order seen

    def __len__(self) -> int:
        return len(self._ts)

    def fresh(self, ts: int, now: float) -> bool:
        """Whether a request signed at `ts` may still be accepted at `now` (if its nonce is new)."""
        return ts > self.floor_ts and self.within_skew(ts, now)

    def within_skew(self, ts: int, now: float) -> bool:
        return abs(now - ts) <= self.skew_s

    def first_use(self, nonce: str, ts: int, now: float) -> bool:
        """Record `nonce`; False if the request is not `fresh` or the nonce was used before."""
        self._forget_expired(now)
        if not self.fresh(ts, now) or nonce in self._ts:
            return False
        if len(self._ts) >= self.max_nonces:
            _, oldest = self._expiry.popleft()
            self.floor_ts = max(self.floor_ts, self._ts.pop(oldest))
        self._ts[nonce] = ts
        self._expiry.append((now + 2 * self.skew_s, nonce))
        return True

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            del self._ts[expiry.popleft()[1]]


class KeyRing(Protocol):
    """The keys a server accepts signatures of: a key id ("" for the cluster secret) to its key
    and its holder's role, or None (unknown, revoked: refused)."""

    def key(self, key_id: str) -> tuple[bytes, str] | None: ...


class SingleKey:
    """A server that accepts one key (the cluster secret, or one role credential's)."""

    def __init__(self, secret: bytes, role: str = CLUSTER_ROLE) -> None:
        self.key_id, self.secret = split_credential(secret)
        self.key_id = self.key_id or ""
        self.role = role

    def key(self, key_id: str) -> tuple[bytes, str] | None:
        return (self.secret, self.role) if key_id == self.key_id else None


class Verifier:
    """The server's side: is a request signed with a key it accepts, unchanged and new?

    `check_head` is cheap and comes first (before any body is read, so a request without a
    key makes the server read nothing); the caller then compares the body with the digest the
    head vouched for (`SignedRequest.body_matches`), and `first_use` consumes the nonce last, so a
    request with a swapped body does not burn the nonce of the genuine one."""

    def __init__(self, keys: KeyRing | bytes, replays: ReplayGuard | None = None) -> None:
        self.keys: KeyRing = SingleKey(keys) if isinstance(keys, bytes) else keys
        self.replays = replays if replays is not None else ReplayGuard()

    def check_head(self, method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                   header: str | None, now: float | None = None) -> SignedRequest | None:
        """The signature if it is right for this request and within the skew window, else None.
        Then see `too_early` (one of ours, but to be signed again) before the body is read."""
        signed = SignedRequest.parse(header)
        if signed is None or not self.replays.within_skew(int(signed.ts), time.time() if now is None else now):
            return None
        found = self.keys.key(signed.key_id)
        if found is None or not signed.mac_matches(found[0], method, target, host, headers):
            return None
        signed.role = found[1]
        return signed

    def too_early(self, signed: SignedRequest) -> bool:
        """Signed before the guard's floor (before this server started, or before the oldest nonce
        it had to drop): it may be a replay it cannot tell, or a genuine request from a client
        whose clock is a little behind; the server asks for it again (503, which clients retry
        signing anew), so a restart never fails a client's call."""
        return int(signed.ts) <= self.replays.floor_ts

    def first_use(self, signed: SignedRequest, now: float | None = None) -> bool:
        return self.replays.first_use(signed.nonce, int(signed.ts), time.time() if now is None else now)
