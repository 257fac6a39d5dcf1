"""Client side of the metaserver's copy and replication endpoints: `chunkfs backup` downloads a
copy, a standby downloads one and then follows the write sets.

A copy comes as one zstd frame (see the metaserver's backup.py). `download_copy` writes it as it
comes, compressed or not, and checks the frame while it does: its checksum over the whole copy,
and that it ended (a copy the metaserver could not finish is cut off before its end).
`save_copy` writes a file next to `dest` and renames it into place only once it is complete, on
disk (fsync) and checked, so `dest` is never a partial copy.
"""

from __future__ import annotations

import errno
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

import httpx
import msgspec
import zstandard

from chunkfs import auth
from chunkfs.durable_files import replace_durably
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp

BACKUP_PATH = "/v1/backup"
REPLICATION_PATH = "/v1/replication"
PIECE_BYTES = 1 << 20

_feed = msgspec.msgpack.Decoder(r.ReplicationFeed)


@dataclass
class CopyInfo:
    size_bytes: int  # as received (compressed)
    database_bytes: int  # the database file it holds


def download_copy(metaserver: str, secret: bytes, out: BinaryIO, decompress: bool, standby: str = "",
                  timeout_s: float = 60.0, tls: ssl.SSLContext | None = None) -> CopyInfo:
    """Stream a copy of the metaserver's database into `out` (the database file itself with
    `decompress`, else as sent: zstd). `standby`: the name of a standby taking its first copy;
    `tls`: the client context of a cluster with TLS (chunkfs.tls).
    Blocking; raises `FsError` (refused, damaged, incomplete) or `TransportError` (unreachable)."""
    target = BACKUP_PATH + (f"?{urlencode({'standby': standby})}" if standby else "")
    headers = {"Host": metaserver, auth.HEADER: auth.sign(secret, "GET", target, metaserver)}
    check = zstandard.ZstdDecompressor().decompressobj()
    received = database = 0
    try:
        with httpx.stream("GET", f"{'https' if tls else 'http'}://{metaserver}{target}", headers=headers,
                          timeout=httpx.Timeout(timeout_s, connect=5.0), verify=tls or True) as response:
            if response.status_code == 401:
                raise FsError(errno.EACCES, f"{metaserver}: the metaserver refused the cluster secret")
            if response.status_code != 200:
                response.read()
                try:
                    raise FsError.from_json(response.json())
                except ValueError:
                    raise FsError(errno.EIO, f"{metaserver}: HTTP {response.status_code}") from None
            for piece in response.iter_bytes(PIECE_BYTES):
                data = check.decompress(piece)
                out.write(data if decompress else piece)
                received += len(piece)
                database += len(data)
    except httpx.HTTPError as exc:
        raise TransportError(f"GET {metaserver}{BACKUP_PATH}: {type(exc).__name__}: {exc} "
                             f"(after {received} bytes)") from None
    except zstandard.ZstdError as exc:
        raise FsError(errno.EIO, f"the copy from {metaserver} arrived damaged: {exc}") from None
    if not check.eof:
        raise FsError(errno.EIO, f"the copy from {metaserver} arrived incomplete ({received} bytes)")
    return CopyInfo(received, database)


def save_copy(metaserver: str, secret: bytes, dest: Path, decompress: bool, standby: str = "",
              tls: ssl.SSLContext | None = None) -> CopyInfo:
    """`download_copy` into the file `dest`, put in place only once complete and durable."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open(partial, "wb") as f:
            info = download_copy(metaserver, secret, f, decompress, standby, tls=tls)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    replace_durably(partial, dest)
    return info


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
