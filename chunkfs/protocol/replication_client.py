"""Client side of the metaserver's copy and replication endpoints: `chunkfs backup` downloads a
copy, a standby downloads one and then follows the write sets.

`download_copy` streams `/v1/backup` to a file next to `dest` and renames it into place only once
it is complete, on disk (fsync) and matches the checksum the metaserver sent, so `dest` is never
a partial copy.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import xxhash

from chunkfs import auth
from chunkfs.durable_files import replace_durably
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp

CHECKSUM_HEADER = "X-Chunkfs-Checksum"  # xxh3-128 of the whole copy
BACKUP_PATH = "/v1/backup"
REPLICATION_PATH = "/v1/replication"
PIECE_BYTES = 1 << 20

_feed = msgspec.msgpack.Decoder(r.ReplicationFeed)


@dataclass
class CopyInfo:
    path: Path
    size_bytes: int
    checksum: str


def download_copy(metaserver: str, secret: bytes, dest: Path, timeout_s: float = 60.0) -> CopyInfo:
    """Blocking; raises `FsError` (refused, damaged) or `TransportError` (unreachable)."""
    partial = dest.with_name(dest.name + ".partial")
    headers = {"Host": metaserver, auth.HEADER: auth.sign(secret, "GET", BACKUP_PATH, metaserver)}
    hasher = xxhash.xxh3_128()
    size = 0
    try:
        with httpx.stream("GET", f"http://{metaserver}{BACKUP_PATH}", headers=headers,
                          timeout=httpx.Timeout(timeout_s, connect=5.0)) as response:
            if response.status_code == 401:
                raise FsError(errno.EACCES, f"{metaserver}: the metaserver refused the cluster secret")
            if response.status_code != 200:
                response.read()
                try:
                    raise FsError.from_json(response.json())
                except ValueError:
                    raise FsError(errno.EIO, f"{metaserver}: HTTP {response.status_code}") from None
            expected = response.headers.get(CHECKSUM_HEADER, "")
            with open(partial, "wb") as f:
                for piece in response.iter_bytes(PIECE_BYTES):
                    f.write(piece)
                    hasher.update(piece)
                    size += len(piece)
                f.flush()
                os.fsync(f.fileno())
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise TransportError(f"GET {metaserver}{BACKUP_PATH}: {type(exc).__name__}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if hasher.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise FsError(errno.EIO, f"the copy from {metaserver} arrived damaged (checksum {hasher.hexdigest()}, "
                                 f"expected {expected or 'none'})")
    replace_durably(partial, dest)
    return CopyInfo(dest, size, expected)


class ReplicationClient:
    def __init__(self, http: SignedHttp, metaserver: str) -> None:
        self.http = http
        self.base = f"http://{metaserver}"

    async def feed(self, name: str, history: str, since: int, synchronous: bool, wait_s: float) -> r.ReplicationFeed:
        """The batches after `since`; asking says every batch up to `since` is applied for good."""
        response = await self.http.request(
            "GET", self.base + REPLICATION_PATH, retry_s=1.0,
            params={"standby": name, "history": history, "since": since, "sync": int(synchronous),
                    "wait_s": wait_s})
        return _feed.decode(response.content)
