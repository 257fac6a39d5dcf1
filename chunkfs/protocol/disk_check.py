"""Records of the disk check (`chunkfs fsck`): what a chunkserver holds, and what the metaserver
finds comparing that with its records.

The check goes in pages of *buckets*: a chunk version is in bucket `chunk_id % BUCKETS`, which is
also the directory its file is in on every chunkserver (`chunks/<bucket as 2 hex digits>/`), so a
chunkserver lists one page by reading a few directories and the metaserver compares one page at a
time: neither ever holds a whole cluster's inventory.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

BUCKETS = 256
INVENTORY_PATH = "/v1/inventory"

Version = tuple[int, int]  # (chunk_id, version)


def bucket_of(chunk_id: int) -> int:
    return chunk_id % BUCKETS


class Inventory(Struct, kw_only=True):
    """The chunk versions a chunkserver holds in some buckets (`GET /v1/inventory`)."""

    old: list[Version]  # files at least `min_age_s` old
    recent: list[Version]  # younger files (an upload may be about to be committed)
    corrupt: list[Version]  # held and failing their checksums (by scrub, a read, or `verify`)


class DiskCheckReq(Struct, kw_only=True):
    """One page of the disk check: buckets `first_bucket .. first_bucket + buckets - 1`."""

    first_bucket: Annotated[int, Meta(ge=0, lt=BUCKETS)] = 0
    buckets: Annotated[int, Meta(ge=1, le=BUCKETS)] = 16  # a page past the last bucket ends there
    verify: bool = False  # the chunkservers re-read every chunk of the page now (slow: reads all data)
    repair: bool = False  # queue the copies and deletions that make the disks agree with the records
    min_age_s: Annotated[float, Meta(ge=0, le=1e9)] = 300.0  # younger chunk files are never unknown (uploads)


class DiskServer(Struct, kw_only=True):
    id: str
    address: str
    state: str  # "up", "down" (no heartbeat), or why it could not be asked
    held: int = 0  # chunk versions it holds in this page's buckets


class DiskReplica(Struct, kw_only=True):
    """One replica whose disk does not agree with the records."""

    chunk_id: int
    version: int
    server_id: str
    state: str  # "missing" (recorded, not on its disk), "corrupt", "unknown" (on a disk, not recorded)
    ino: int = 0  # the file it belongs to (0 for unknown ones)
    index: int = 0


class DiskFile(Struct, kw_only=True):
    """A file with a chunk short of good replicas: missing, corrupt or on servers that are down."""

    ino: int
    path: bytes  # one of its paths, from the root (empty if it has no name: an open unlinked file)
    goal: int
    chunks_under_goal: int = 0  # fewer good replicas than the goal, at least one
    chunks_lost: int = 0  # no good replica, none on a server that is down: the data is gone
    chunks_unavailable: int = 0  # no good replica on a server that is up; maybe on one that is down


class DiskCheckPage(Struct, kw_only=True):
    servers: list[DiskServer]
    chunks_checked: int = 0
    missing: int = 0  # replicas
    corrupt: int = 0
    unknown: int = 0
    unreachable: int = 0  # recorded on a server that is down or did not answer: state unknown
    replicas: list[DiskReplica] = []  # the replicas counted above, but those on unreachable servers (capped)
    files: list[DiskFile] = []
    repaired: int = 0  # replicas a copy or deletion was queued for (with `repair`)
    next_bucket: int = BUCKETS  # where the next page starts; BUCKETS when the check is done
