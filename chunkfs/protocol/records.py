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
    inline: bytes | None = None  # a small file's bytes, kept by the metaserver (no chunks then)


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
    umask: int = 0  # applied by the metaserver unless the directory has a default ACL
    ino: int = 0  # the inode number, from the client's reserved block (0: the metaserver picks)
    lease: bool = False  # a directory: its creator holds it alone until another client asks (leases.py)


class LinkReq(Struct):
    ino: int
    parent: int
    name: bytes


class RemoveReq(Struct):
    """`open_here` are inodes client `open_by` has open: one of them losing its last name is
    kept (an orphan) until that client closes it or its session ends."""

    parent: int
    name: bytes
    is_dir: bool
    open_by: str = ""
    open_here: list[int] = []


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # RenameReq.flags, as renameat2(2)


class RenameReq(Struct):
    old_parent: int
    old_name: bytes
    new_parent: int
    new_name: bytes
    flags: int = 0
    open_by: str = ""  # as in RemoveReq, for the entry a rename replaces
    open_here: list[int] = []


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
    client uploaded and then replaced itself, to be deleted. With `inline`, the file's whole
    content is those bytes (zeros after them up to `size`, at most INLINE_MAX_BYTES) and its chunks
    are dropped. `attrs` are changes made to the file while it was open and not yet committed
    (mode, owner, times of a file this client created), applied after the new content."""

    ino: int
    size: int
    mtime_ns: int
    chunks: list[ChunkRef]
    discard: list[ChunkRef] = []
    inline: bytes | None = None
    attrs: SetattrReq | None = None
    create: CreateReq | None = None  # a file created in a leased directory: created by this commit


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
    recalls: list[int] = []  # directories leased to this client that another client needs now


class LeaseReq(Struct):
    inodes: list[int]


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
    data_dirs: list[str] = []  # where it keeps its chunks (for `chunkfs servers`)
    read_bytes: int = 0  # chunk bytes served since the chunkserver started
    written_bytes: int = 0  # chunk bytes stored since the chunkserver started


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
    data_dirs: list[str] = []


class ClusterStatus(Struct, kw_only=True):
    servers: list[ServerStatus]
    files: int
    directories: int
    chunks: int
    chunks_under_goal: int  # as of the replicator's last scan, `under_goal_counted_s_ago`
    pending_deletions: int
    total_bytes: int
    free_bytes: int
    default_goal: int
    repairs_running: int = 0  # chunk copies in flight (re-replication)
    chunks_replicated: int = 0  # copies made since the metaserver started
    corrupt_found: int = 0  # corrupt replicas reported since the metaserver started
    repair_copies_pending: int = 0  # copies the last re-replication pass found needed and possible
    versions_deleted: int = 0  # chunk versions deleted everywhere since the metaserver started
    replicas_deleted: int = 0  # chunk replicas deleted since the metaserver started
    throughput: Throughput | None = None
    clients: list[ClientStatus] = []  # mounts following the change feed, with their caches
    standbys: list[StandbyStatus] = []  # metaserver standbys following this one
    quarantined_versions: int = 0  # unknown chunk versions kept after a restore (not deleted)
    file_bytes: int = 0  # sum of the regular files' sizes
    chunk_bytes: int = 0  # sum of the chunks' lengths (one replica each)
    under_goal_counted_s_ago: float = -1.0  # age of `chunks_under_goal` (-1: not counted yet)
    memory: MemoryStatus | None = None  # the metaserver's own memory, and what holds it


class MemoryStatus(Struct, kw_only=True):
    """What the metaserver holds in memory: its process (from /proc), the LMDB map, and every
    structure that grows with files or clients, each with its bound."""

    rss_anon_bytes: int = 0  # the process's own memory (heap): what must stay bounded
    rss_file_bytes: int = 0  # mapped files resident (mostly LMDB pages): page cache, reclaimable
    lmdb_map_bytes: int = 0  # the LMDB map size (address space reserved, not memory)
    lmdb_used_bytes: int = 0  # pages of the map in use
    replication_log_bytes: int = 0  # write sets kept for standbys (real bytes; 0 without a standby)
    replication_log_limit_bytes: int = 0
    replication_log_batches: int = 0
    change_feed_changes: int = 0
    change_feed_limit: int = 0
    clients_tracked: int = 0  # mounts heard from within the last hour
    leases_held: int = 0  # directory leases held by clients
    chunk_reservations: int = 0  # version blocks handed to writers within the orphan grace
    corrupt_reports: int = 0  # corrupt copies remembered for fsck (at most 100,000)
    gc_pause_max_s: float = 0.0  # the longest garbage-collector pass since start
    gc_pause_last_s: float = 0.0


class ThroughputSample(Struct):
    """Bytes per second the chunkservers read and wrote in the `interval_s` before `time`."""

    time: float  # Unix time at the end of the interval
    read_bytes_per_s: float
    written_bytes_per_s: float


class Throughput(Struct, kw_only=True):
    """The cluster's chunk traffic over the last minutes, oldest sample first."""

    interval_s: float
    window_s: float
    samples: list[ThroughputSample]


class CacheStats(Struct, kw_only=True):
    """A mount's chunk cache since it started: chunk reads answered from memory, from its local
    disk, or fetched from a chunkserver (misses), and what each tier holds."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    memory_bytes: int = 0
    memory_capacity_bytes: int = 0
    disk_bytes: int = 0
    disk_capacity_bytes: int = 0


class ClientReport(Struct, kw_only=True):
    """What a mount says of itself on each change-feed poll (so it adds no call of its own)."""

    host: str
    mountpoint: str
    cache: CacheStats


class ClientStatus(Struct, kw_only=True):
    id: str
    host: str
    mountpoint: str
    last_seen_s: float
    cache: CacheStats


class CorruptReport(Struct):
    """Chunk versions a chunkserver found failing their checksums (by scrub or on a read)."""

    server_id: str
    chunks: list[tuple[int, int]]


class CorruptReply(Struct):
    dropped: int  # replicas taken out of their records (and queued for deletion)


class FsckReq(Struct):
    """One page of a check of every file under directory (or file) `root`, depth first; `cursor`
    is where the previous page stopped (empty: start at `root`)."""

    root: int = 1
    cursor: list[FsckFrame] = []
    limit: int = 1000  # entries visited per page at most


class FsckFrame(Struct, array_like=True):
    """A directory the walk is inside: its inode, its name and the last entry done in it."""

    ino: int
    name: bytes
    after: bytes | None = None


class FileProblems(Struct, kw_only=True):
    """What is wrong with one file's chunks (counts of chunks; a chunk counts once, under the
    worst of missing > corrupt > under goal > over goal)."""

    path: bytes
    ino: int
    goal: int
    chunks: int
    missing: int = 0  # no replica on a live server that was not reported corrupt
    corrupt: int = 0  # a replica reported corrupt is still recorded, or the chunk is not yet rebuilt
    under_goal: int = 0
    over_goal: int = 0


class FsckPage(Struct, kw_only=True):
    files_checked: int
    chunks_checked: int
    problems: list[FileProblems]
    cursor: list[FsckFrame]  # pass back for the next page; empty when the walk is done


class GcReq(Struct):
    dry_run: bool = False
    min_age_s: float = 300.0  # chunk files written more recently are left alone (uploads in flight)


class GcServer(Struct, kw_only=True):
    id: str
    address: str
    versions: int = 0  # unreferenced chunk versions found there
    bytes: int = 0
    error: str = ""  # why the server could not be asked (down, unreachable)


class GcReport(Struct, kw_only=True):
    dry_run: bool
    versions: int  # unreferenced chunk versions found (and queued for deletion unless dry_run)
    bytes: int
    servers: list[GcServer]


class ChunkFile(Struct, array_like=True):
    """A chunk version a chunkserver holds, with its size on disk."""

    chunk_id: int
    version: int
    size_bytes: int


class DrainReq(Struct):
    server: str  # address (HOST:PORT) or id
    draining: bool = True


class ReplicationBatch(Struct, array_like=True):
    """One committed batch's write set: (table, key, value, or None for a delete), in order."""

    seq: int
    ops: list[tuple[str, bytes, bytes | None]]


class ReplicationFeed(Struct):
    """`/v1/replication` (msgpack): the batches after the standby's `since`, oldest first."""

    history: str
    primary_seq: int  # the last batch committed on the primary
    batches: list[ReplicationBatch]


class StandbyStatus(Struct):
    name: str
    synchronous: bool
    in_sync: bool  # a synchronous standby in sync: changes wait for it
    acked_seq: int
    behind_batches: int
    last_poll_s: float


json_encode = msgspec.json.encode
json_decode = msgspec.json.decode
