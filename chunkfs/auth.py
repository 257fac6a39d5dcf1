"""Cluster-secret authentication: every request carries an HMAC of what it asks for.

The header `X-Chunkfs-Auth: <unix-seconds>.<hex hmac-sha256(secret, "METHOD\\npath?query\\nts")>`
proves the sender holds the cluster secret; a request whose header is missing, wrong or more than
`MAX_SKEW_S` old is refused with 401 before any handler runs. Bodies are not signed: chunk data is
protected by its checksum, metadata bodies travel only with a signed path.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

HEADER = "X-Chunkfs-Auth"
MAX_SKEW_S = 300


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
    secret = Path(path).read_text().strip().encode()
    if len(secret) < 16:
        raise ValueError(f"cluster secret in {path} is too short (need at least 16 characters)")
    return secret


def _mac(secret: bytes, method: str, target: str, ts: str) -> str:
    msg = f"{method.upper()}\n{target}\n{ts}".encode()
    return hmac.digest(secret, msg, "sha256").hex()  # one C call, no HMAC object


def sign(secret: bytes, method: str, target: str, now: float | None = None) -> str:
    ts = str(int(now if now is not None else time.time()))
    return f"{ts}.{_mac(secret, method, target, ts)}"


def verify(secret: bytes, method: str, target: str, header: str | None, now: float | None = None) -> bool:
    if not header or "." not in header:
        return False
    ts, mac = header.split(".", 1)
    try:
        age = abs((now if now is not None else time.time()) - int(ts))
    except ValueError:
        return False
    return age <= MAX_SKEW_S and hmac.compare_digest(mac, _mac(secret, method, target, ts))
