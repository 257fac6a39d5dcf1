"""Records that cross the wire between the mount, the metaserver and the chunkservers.

Encoded as JSON with msgspec (names are bytes, sent as base64). A request that does not decode
into its record is answered 400 with msgspec's message, before any handler runs.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class Attr(Struct, kw_only=True):
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int = 0
    goal: int = 0
    blocks: int = 0  # 512-byte units actually stored (sparse files count only their chunks)
    has_xattrs: bool = False


class DirEntry(Struct):
    name: bytes
    attr: Attr


class ChunkRef(Struct, kw_only=True):
    """One chunk of one file: `length` is its logical length, `checksum` covers the stored bytes."""

    index: int
    chunk_id: int
    version: int
    length: int
    checksum: str
    replicas: list[str]


class ServerRef(Struct):
    id: str
    address: str


class FileLayout(Struct):
    attr: Attr
    chunks: list[ChunkRef]
    servers: dict[str, str]  # alive server id -> address


class ServerChoice(Struct):
    id: str
    address: str
    free_bytes: int


class Reservation(Struct):
    """Chunk ids and versions reserved for one client, and the servers it may write to.

    Versions `first_version .. first_version+count-1` and chunk ids `first_chunk_id ..
    first_chunk_id+count-1` are this client's alone; a new version of an existing chunk keeps
    its chunk id. `servers` are the alive chunkservers with room, with their free space for
    weighting; the client refreshes a reservation once it is used up or `valid_s` old."""

    first_version: int
    first_chunk_id: int
    count: int
    servers: list[ServerChoice]
    valid_s: float


class Statfs(Struct):
    total_bytes: int
    free_bytes: int
    files: int
    chunks: int


# ---- requests -------------------------------------------------------------------------------


class InodeReq(Struct):
    ino: int


class LookupReq(Struct):
    parent: int
    name: bytes


class SetattrReq(Struct, kw_only=True):
    ino: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class CreateReq(Struct, kw_only=True):
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    target: bytes | None = None  # symlinks only


class LinkReq(Struct):
    ino: int
    parent: int
    name: bytes


class RemoveReq(Struct):
    parent: int
    name: bytes
    is_dir: bool


class RenameReq(Struct):
    old_parent: int
    old_name: bytes
    new_parent: int
    new_name: bytes
    flags: int = 0


class ReaddirReq(Struct):
    ino: int
    after: bytes | None = None
    limit: int = 1000


class XattrReq(Struct):
    ino: int
    name: bytes
    value: bytes | None = None
    flags: int = 0


class ReserveReq(Struct):
    count: int


class CommitReq(Struct):
    """New chunk versions become the file's (the last commit wins); `discard` are versions this
    client uploaded and then replaced itself, to be deleted."""

    ino: int
    size: int
    mtime_ns: int
    chunks: list[ChunkRef]
    discard: list[ChunkRef] = []


class GoalReq(Struct):
    ino: int
    goal: int
    recursive: bool = False


class PathReq(Struct):
    path: bytes


class Change(Struct, array_like=True):
    seq: int
    origin: str  # the client that made it (it skips its own changes)
    inodes: list[int]
    entries: list[tuple[int, bytes]]


class ChangeBatch(Struct):
    seq: int
    changes: list[Change]
    reset: bool = False


# ---- chunkserver <-> metaserver -------------------------------------------------------------


class ServerHello(Struct, kw_only=True):
    """A chunkserver's registration: who it is, where it listens, and (at start) what it holds."""

    id: str
    address: str
    capacity_bytes: int
    used_bytes: int
    chunks: list[tuple[int, int]] | None = None  # (chunk_id, version) on disk, sent at start
    # the rest of what is on disk at start: too new to be offered for deletion, but held
    recent_chunks: list[tuple[int, int]] | None = None


class HelloReply(Struct):
    delete: list[tuple[int, int]]  # chunks the server holds that no file references


class ServerStatus(Struct, kw_only=True):
    id: str
    address: str
    capacity_bytes: int
    used_bytes: int
    last_seen_s: float
    alive: bool
    chunks: int = 0  # chunk versions whose records list this server
    draining: bool = False


class ClusterStatus(Struct, kw_only=True):
    servers: list[ServerStatus]
    files: int
    directories: int
    chunks: int
    chunks_under_goal: int
    pending_deletions: int
    total_bytes: int
    free_bytes: int
    default_goal: int
    repairs_running: int = 0  # chunk copies in flight (re-replication)
    chunks_replicated: int = 0  # copies made since the metaserver started
    corrupt_found: int = 0  # corrupt replicas reported since the metaserver started


class CorruptReport(Struct):
    """Chunk versions a chunkserver found failing their checksums (by scrub or on a read)."""

    server_id: str
    chunks: list[tuple[int, int]]


class CorruptReply(Struct):
    dropped: int  # replicas taken out of their records (and queued for deletion)


class DrainReq(Struct):
    server: str  # address (HOST:PORT) or id
    draining: bool = True


json_encode = msgspec.json.encode
json_decode = msgspec.json.decode
