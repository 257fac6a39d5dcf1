"""Records that cross the wire between the mount, the metaserver and the chunkservers.

Encoded as JSON with msgspec (names are bytes, sent as base64). A request that does not decode
into its record is answered 400 with msgspec's message, before any handler runs.

Request records carry the limits of `limits.py`: ranges as msgspec constraints (checked when a
server decodes a request: EINVAL), and the checks that have an errno of their own (a name too
long, a size too large, a bad mode) in `__post_init__`, which msgspec runs after decoding and
which raises `FsError` (it also runs when a client builds the record, so a client finds out
before sending). Replies are not constrained: a client checks what it cannot represent per
entry (see the mount's attributes), so one bad stored value cannot fail a whole listing.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from chunkfs import CHUNK_SIZE, MAX_NAME_BYTES
from chunkfs.errors import FsError
from chunkfs.protocol import limits

Ino = Annotated[int, Meta(ge=1, le=limits.MAX_ID)]
NewIno = Annotated[int, Meta(ge=0, le=limits.MAX_ID)]  # 0: the metaserver picks one
ChunkId = Annotated[int, Meta(ge=1, le=limits.MAX_ID)]
Version = Annotated[int, Meta(ge=1, le=limits.MAX_ID)]
ChunkIndex = Annotated[int, Meta(ge=0, le=limits.MAX_CHUNK_INDEX)]
ChunkLength = Annotated[int, Meta(ge=0, le=CHUNK_SIZE)]
Uid = Annotated[int, Meta(ge=0, le=limits.MAX_UID)]
Mode = Annotated[int, Meta(ge=0, le=limits.MAX_MODE)]
TimeNs = Annotated[int, Meta(ge=limits.MIN_TIME_NS, le=limits.MAX_TIME_NS)]
Name = Annotated[bytes, Meta(max_length=MAX_NAME_BYTES)]
Token = Annotated[str, Meta(max_length=limits.MAX_TOKEN_CHARS, pattern=f"^{limits.TOKEN.pattern}$")]
OptionalToken = Annotated[str, Meta(max_length=limits.MAX_TOKEN_CHARS, pattern=f"^({limits.TOKEN.pattern})?$")]
Address = Annotated[str, Meta(max_length=256)]
Checksum = Annotated[str, Meta(max_length=128)]
Count = Annotated[int, Meta(ge=0, le=2**31)]
Bytes64 = Annotated[int, Meta(ge=0, le=limits.MAX_ID)]
Seconds = Annotated[float, Meta(ge=0, le=1e9)]


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
    read_only: bool = False  # in a read-only snapshot: every change is EROFS
    no_dedup: bool = False  # writers upload every chunk of it without looking for stored content (`chunkfs dedup`)


class DirEntry(Struct):
    name: bytes
    attr: Attr
    xattr: bytes | None = None  # the value of the xattr the listing asked for (ReaddirReq.xattr), if set
    # with ReaddirReq.xattr: the entry's access ACL too (None: it has none), which decides whether
    # the caller may read that xattr (no getxattr per entry); unset from a metaserver that does not send it
    acl: bytes | msgspec.UnsetType | None = msgspec.UNSET


ContentHex = Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")]  # 32 bytes as hex (chunkfs.content_hash), or ""


class ChunkRef(Struct, kw_only=True, omit_defaults=True):
    """One chunk of one file: `length` is its logical length, `checksum` covers the stored bytes.
    In a commit, `content` and `proof` are the chunk's content name and proof (dedup: the
    metaserver indexes them, chunkfs.content_hash), and `shared` marks a version this client did
    not upload but was handed by a `dedup` call (its content already stored)."""

    index: ChunkIndex
    chunk_id: ChunkId
    version: Version
    length: ChunkLength
    checksum: Checksum
    replicas: Annotated[list[Token], Meta(max_length=64)]
    token: Annotated[str, Meta(max_length=128)] = ""  # for the chunkservers (chunkfs.chunk_tokens)
    content: ContentHex = ""
    proof: ContentHex = ""
    shared: bool = False


class ServerRef(Struct):
    id: str
    address: str


class FileLayout(Struct):
    attr: Attr
    chunks: list[ChunkRef]
    servers: dict[str, str]  # alive server id -> address
    inline: bytes | None = None  # a small file's bytes, kept by the metaserver (no chunks then)
    leased: bool = False  # the client holds an open lease on it (metaserver/open_leases.py)


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
    token: str = ""  # reads and writes of these versions, of any chunk id (chunkfs.chunk_tokens)


class Statfs(Struct):
    total_bytes: int
    free_bytes: int
    files: int
    chunks: int


# ---- requests -------------------------------------------------------------------------------


class InodeReq(Struct):
    ino: Ino


class OpenReq(InodeReq):
    lease: bool = False  # ask for an open lease (metaserver/open_leases.py)


class LookupReq(Struct):
    parent: Ino
    name: bytes

    def __post_init__(self) -> None:
        limits.check_name(self.name)


class SetattrReq(Struct, kw_only=True):
    ino: Ino
    mode: int | None = None
    uid: Uid | None = None
    gid: Uid | None = None
    size: int | None = None
    atime_ns: TimeNs | None = None
    mtime_ns: TimeNs | None = None

    def __post_init__(self) -> None:
        if self.mode is not None:
            limits.check_mode(self.mode, needs_type=False)
        if self.size is not None:
            limits.check_size(self.size)


class CreateReq(Struct, kw_only=True):
    parent: Ino
    name: bytes
    mode: int
    uid: Uid
    gid: Uid
    rdev: Uid = 0
    target: bytes | None = None  # symlinks only
    umask: Annotated[int, Meta(ge=0, le=0o7777)] = 0  # applied by the metaserver unless the directory has a default ACL
    ino: NewIno = 0  # the inode number, from the client's reserved block (0: the metaserver picks)
    lease: bool = False  # a directory: its creator holds it alone until another client asks (leases.py)

    def __post_init__(self) -> None:
        limits.check_name(self.name)
        limits.check_mode(self.mode, needs_type=True)
        if self.target is not None:
            limits.check_symlink_target(self.target)


class LinkReq(Struct):
    ino: Ino
    parent: Ino
    name: bytes

    def __post_init__(self) -> None:
        limits.check_name(self.name)


class Removed(Struct):
    """What a remove did: the inode the name was of, and the directory's attributes after it
    (its new times and link count: the client keeps them, so the kernel's getattr of the
    directory that follows every unlink is answered without a second call)."""

    ino: Ino
    parent: Attr


class Renamed(Struct):
    """What a rename did: the inodes moved or replaced, and the attributes of the directories
    it changed, after it (none if it changed nothing), for the same reason as `Removed`."""

    moved: list[Ino]
    parents: list[Attr]


class RemoveReq(Struct):
    """`open_here` are inodes client `open_by` has open: one of them losing its last name is
    kept (an orphan) until that client closes it or its session ends."""

    parent: Ino
    name: bytes
    is_dir: bool
    open_by: OptionalToken = ""
    open_here: list[Ino] = []

    def __post_init__(self) -> None:
        limits.check_name(self.name)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # RenameReq.flags, as renameat2(2)


class RenameReq(Struct):
    old_parent: Ino
    old_name: bytes
    new_parent: Ino
    new_name: bytes
    flags: Annotated[int, Meta(ge=0, le=2**31)] = 0
    open_by: OptionalToken = ""  # as in RemoveReq, for the entry a rename replaces
    open_here: list[Ino] = []

    def __post_init__(self) -> None:
        limits.check_name(self.old_name)
        limits.check_name(self.new_name)


class ReaddirReq(Struct):
    ino: Ino
    after: Name | None = None  # not checked as a new name: a listing goes on after any stored name
    limit: Annotated[int, Meta(ge=1, le=2**31)] = 1000
    xattr: Name | None = None  # also each entry's value of this xattr and its access ACL (one call lists a bucket's ETags)


class XattrReq(Struct):
    ino: Ino
    name: bytes
    value: bytes | None = None
    flags: Annotated[int, Meta(ge=0, le=3)] = 0

    def __post_init__(self) -> None:
        limits.check_xattr(self.name, self.value)


class ReserveReq(Struct):
    count: Annotated[int, Meta(ge=1, le=2**31)]


class DedupReq(Struct):
    """Does the cluster hold this content (its name and the proof that the asker has it,
    chunkfs.content_hash)? Asked before a chunk is uploaded."""

    content: ContentHex
    proof: ContentHex


MAX_DEDUP_BATCH = 256  # contents asked about in one call (a writer asks for a window of its chunks)


class DedupBatchReq(Struct):
    """Which of these contents does the cluster hold? One call for a writer's window of chunks
    (`chunkfs.client.content_finder`): the answers' pins share one durable commit."""

    contents: Annotated[list[DedupReq], Meta(min_length=1, max_length=MAX_DEDUP_BATCH)]


class DedupHit(Struct):
    """The stored version holding the content asked about: commit it as a `shared` ChunkRef
    (it is kept for the asker's credential for `valid_s`, however its other files change);
    `token` reads it."""

    chunk_id: int
    version: int
    length: int
    checksum: str
    replicas: list[str]
    token: str = ""
    valid_s: float = 0.0


MAX_COMMIT_XATTRS = 256  # xattrs one commit may set


class CommitReq(Struct):
    """New chunk versions become the file's (the last commit wins); `discard` are versions this
    client uploaded and then replaced itself, to be deleted. With `inline`, the file's whole
    content is those bytes (zeros after them up to `size`, at most INLINE_MAX_BYTES) and its chunks
    are dropped. `attrs` are changes made to the file while it was open and not yet committed
    (mode, owner, times of a file this client created), applied after the new content."""

    ino: Ino
    size: int
    mtime_ns: TimeNs
    chunks: list[ChunkRef]
    discard: list[ChunkRef] = []
    inline: bytes | None = None
    attrs: SetattrReq | None = None
    create: CreateReq | None = None  # a file created in a leased directory: created by this commit
    # user.* xattrs set on the file in the commit's transaction (a door storing an object with its
    # metadata: it appears with them or not at all), after the content and `attrs`
    xattrs: Annotated[list[tuple[bytes, bytes]], Meta(max_length=MAX_COMMIT_XATTRS)] = []

    def __post_init__(self) -> None:
        limits.check_size(self.size)
        for name, value in self.xattrs:
            limits.check_xattr(name, value)
            if not name.startswith(b"user."):
                raise FsError(errno.EINVAL, f"a commit sets user.* attributes only, not {name!r}")


class ConcatReq(Struct):
    """The chunks of `sources` (regular files, in this order) appended to file `ino` by
    reference: no byte is copied, the chunk records change owner, and the sources are left empty.
    Chunk i of a file holds its bytes [i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE), so the target's
    size and the size of every source but the last must be multiples of CHUNK_SIZE, and no
    source may be kept inline (EINVAL otherwise, and nothing changes). What upload sessions
    (S3 multipart Complete, a resumed `chunkfs put`) are committed with."""

    ino: Ino
    sources: Annotated[list[Ino], Meta(min_length=1, max_length=10_000)]
    mtime_ns: TimeNs


class GoalReq(Struct):
    ino: Ino
    goal: Annotated[int, Meta(ge=1, le=16)]
    recursive: bool = False


class QuotaSetReq(Struct, kw_only=True):
    """Limits of directory `ino`'s quota (metaserver/quotas.py); 0 is no limit, one at least is set."""

    ino: Ino
    bytes_hard: Bytes64 = 0
    bytes_soft: Bytes64 = 0
    inodes_hard: Bytes64 = 0
    inodes_soft: Bytes64 = 0


class SnapshotReq(Struct):
    """A copy of file or directory `ino` as `name` in directory `parent`, sharing its chunks."""

    ino: Ino
    parent: Ino
    name: bytes
    root_owner: Annotated[int, Meta(ge=-1, le=limits.MAX_UID)] = -1  # >= 0: copies of uid/gid 0 get it (root squash)
    read_only: bool = False  # the copy refuses every change with EROFS

    def __post_init__(self) -> None:
        limits.check_name(self.name)


class ReadOnlyReq(Struct):
    """Mark `ino` (and with `recursive` its tree) read-only, or writable again."""

    ino: Ino
    read_only: bool
    recursive: bool = False


MAX_TRASH_S = 100 * 365 * 86400


class DedupSettingReq(Struct):
    """Whether writers of directory (or file) `ino`, and of what is made in it, look for
    content the cluster holds before they upload a chunk (dedup)."""

    ino: Ino
    enabled: bool
    recursive: bool = False


class TrashTimeReq(Struct):
    """How long files removed from directory (or file) `ino` stay in the trash (0: not kept)."""

    ino: Ino
    seconds: Annotated[int, Meta(ge=0, le=MAX_TRASH_S)]
    recursive: bool = False


class TrashListReq(Struct):
    after: Annotated[int, Meta(ge=0, le=limits.MAX_ID)] = 0  # ids above this one (0: from the first)
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    under: NewIno = 0  # only files removed from this directory or below it (0: all)


class TrashItem(Struct, kw_only=True):
    id: int  # what `trash restore` and `trash purge` take (the file's inode number)
    path: bytes  # where it was: its directory's path as it is now, and its name
    size: int
    deleted_ns: int
    expires_ns: int


class TrashRestoreReq(Struct, kw_only=True):
    """Put file `id` back: in directory `parent` under `name` (0 / empty: where it was)."""

    id: Ino
    parent: NewIno = 0
    name: Name = b""


class TrashRestored(Struct):
    parent: int
    name: bytes
    attr: Attr


class TrashPurgeReq(Struct, kw_only=True):
    """Free files of the trash now: those named, or with `everything` a page of all of them."""

    ids: Annotated[list[Ino], Meta(max_length=10_000)] = []
    everything: bool = False


class QuotaLimitReq(Struct):
    """How big file `ino` may grow under the quotas above it; `parent`: the directory of a file
    whose create the client still holds (leases), for a file the metaserver has not seen yet."""

    ino: Ino
    parent: NewIno = 0


class QuotaInfo(Struct, kw_only=True):
    """A directory's quota: its limits (0: none) and the logical bytes and inodes below it."""

    ino: int
    path: bytes
    bytes_hard: int = 0
    bytes_soft: int = 0
    inodes_hard: int = 0
    inodes_soft: int = 0
    used_bytes: int = 0
    used_inodes: int = 0

    @property
    def over_soft(self) -> list[str]:
        """The soft limits passed ("bytes", "inodes")."""
        return [what for what, used, soft in (("bytes", self.used_bytes, self.bytes_soft),
                                              ("inodes", self.used_inodes, self.inodes_soft)) if soft and used > soft]


class QuotaCheck(Struct, kw_only=True):
    """A quota whose recorded usage differs from a recount of its tree (`chunkfs fsck`)."""

    ino: int
    path: bytes
    recorded_bytes: int
    recorded_inodes: int
    counted_bytes: int
    counted_inodes: int


class PathReq(Struct):
    path: Annotated[bytes, Meta(max_length=limits.MAX_PATH_BYTES)]


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
    # the feed's epoch: seqs count within one, and another one than before means the feed was
    # cut (a metaserver restart or promotion), as `reset` does
    epoch: str = ""
    # this client's session ended since it last checked its locks (they were dropped): it checks
    # them now (chunkfs/metaserver/lock_reclaim.py), as after a cut of its feed
    locks_lost: bool = False


class LeaseReq(Struct):
    inodes: list[Ino]


# ---- write-behind batches (chunkfs/client/write_behind.py) -------------------------------------

MAX_BATCH_OPS = 1000
OpName = Annotated[str, Meta(max_length=32)]


class BatchOp(Struct, array_like=True):
    """One mutation of a batch: its operation's name (as in /v1/fs/{op}) and its request record,
    encoded as that operation's body is; `at_ns`, when the client answered it (its programs saw
    that time as the change's ctime): the metaserver stamps the change with it if it is near its
    own clock (chunkfs/metaserver/change_clock.py), 0 for its own clock."""

    op: OpName
    req: msgspec.Raw
    at_ns: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0


class BatchReq(Struct):
    """Mutations a client made in order and sends together: the metaserver applies them in that
    order, each on its own (one failing changes nothing of it and does not stop the others), all
    in one durable transaction, and answers once it is durable."""

    ops: Annotated[list[BatchOp], Meta(max_length=MAX_BATCH_OPS)]


class BatchOutcome(Struct, array_like=True):
    """What one mutation of a batch answered: its reply (as the single call's body), or its error."""

    errno: int = 0
    message: str = ""
    reply: msgspec.Raw = msgspec.Raw(b"null")


# ---- file locks (chunkfs/metaserver/locks.py) ------------------------------------------------

F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2  # a lock's type, as Linux numbers them
OFFSET_MAX = 2**63 - 1  # a lock's end "to the end of the file", as the kernel's
LockType = Annotated[int, Meta(ge=F_RDLCK, le=F_UNLCK)]
Offset = Annotated[int, Meta(ge=0, le=OFFSET_MAX)]
MAX_LOCK_OWNER = 2**64 - 1  # the kernel's lock_owner: any 64-bit number (checked in __post_init__:
LockOwner = Annotated[int, Meta(ge=0)]  # msgspec's bounds stop at 2**63 - 1)
Pid = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class LockReq(Struct, kw_only=True):
    """Take (F_RDLCK, F_WRLCK) or drop (F_UNLCK) a lock for `owner` of the calling client:
    a POSIX record lock on bytes `start`..`end` (inclusive), or a whole-file flock. With `wait`,
    a conflict waits (the call is a long poll: asked again with the same `wait_id` until
    `LockReply.granted`); without, it is EAGAIN. Also F_GETLK's question (op `testlock`)."""

    ino: Ino
    owner: LockOwner
    type: LockType
    flock: bool = False
    start: Offset = 0
    end: Offset = OFFSET_MAX
    pid: Pid = 0  # the caller's process, for F_GETLK answers and `chunkfs locks`
    wait: bool = False
    wait_id: Bytes64 = 0  # the client's number for this wait (0: none)

    def __post_init__(self) -> None:
        if self.owner > MAX_LOCK_OWNER:
            raise FsError(errno.EINVAL, f"a lock owner is a 64-bit number, not {self.owner}")
        if self.start > self.end:
            raise FsError(errno.EINVAL, f"a lock's start {self.start} is past its end {self.end}")


class LockReply(Struct):
    """`granted` false: still waiting (ask again). `attr`: the file as the metaserver has it
    now, so the client can drop what it cached of an older version."""

    granted: bool
    attr: Attr | None = None
    # the change feed as of the grant: the newest change another client made, which the
    # client applies before it goes on (it sees the names the previous holder changed)
    feed_seq: int = 0
    feed_epoch: str = ""


class LockCancelReq(Struct):
    wait_id: Bytes64


class LocksReq(Struct):
    ino: Annotated[int, Meta(ge=0, le=limits.MAX_ID)] = 0  # 0: every file


class LockReclaimReq(Struct):
    """The locks a client holds, as granted in feed epoch `epoch` (chunkfs/metaserver/lock_reclaim.py):
    given back to a restarted metaserver, or checked after the client's feed was cut."""

    epoch: Annotated[str, Meta(max_length=64)]
    locks: Annotated[list[LockReq], Meta(max_length=100_000)]


class LockReclaimReply(Struct):
    lost: list[int]  # the indexes in `locks` of those not held (any more)
    epoch: str  # the metaserver's feed epoch: the others are held in it


class LockInfo(Struct, kw_only=True):
    """A lock held (or waited for, `waiting`); type F_UNLCK in a F_GETLK answer: nothing conflicts."""

    type: int
    start: int
    end: int
    pid: int = 0  # 0 when the holder is another client (its pids mean nothing here)
    ino: int = 0
    client: str = ""
    owner: int = 0
    flock: bool = False
    waiting: bool = False


# ---- chunkserver <-> metaserver -------------------------------------------------------------


class ServerHello(Struct, kw_only=True):
    """A chunkserver's registration: who it is, where it listens, and (at start) what it holds."""

    id: Token
    address: Address
    capacity_bytes: Bytes64
    used_bytes: Bytes64
    # (chunk_id, version) on disk, sent at start; not constrained here: the metaserver leaves
    # out (and logs) ids out of range, so one bad file name cannot stop a registration
    chunks: list[tuple[int, int]] | None = None
    # the rest of what is on disk at start: too new to be offered for deletion, but held
    recent_chunks: list[tuple[int, int]] | None = None
    data_dirs: list[Annotated[str, Meta(max_length=limits.MAX_PATH_BYTES)]] = []  # where it keeps its chunks
    read_bytes: Bytes64 = 0  # chunk bytes served since the chunkserver started
    written_bytes: Bytes64 = 0  # chunk bytes stored since the chunkserver started

    def __post_init__(self) -> None:
        limits.check_server_address(self.address)
        if self.used_bytes > self.capacity_bytes:
            raise FsError(errno.EINVAL, f"used_bytes {self.used_bytes} is over capacity_bytes {self.capacity_bytes}")


class HelloReply(Struct):
    delete: list[tuple[int, int]]  # chunks the server holds that no file references
    # the key chunk tokens are made with, wrapped with the key the hello was signed with
    # (chunkfs.chunk_tokens.wrap); empty from a metaserver that issues no tokens
    chunk_key_nonce: str = ""
    chunk_key: str = ""
    epoch: int = 0  # the primary's fencing epoch (chunkserver/fencing.py); 0: no election


class TokenKey(Struct):
    """The caller's token key (chunkfs.chunk_tokens.holder_key), which its chunk requests
    presenting a token are signed with, under `key_id`: wrapped with the key the request for it
    was signed with (chunkfs.chunk_tokens.wrap); empty from a metaserver that issues no tokens."""

    key_id: str = ""
    nonce: str = ""
    wrapped: str = ""


class TokensReq(Struct):
    """New read tokens for chunk versions some file references (a client's expired)."""

    chunks: Annotated[list[tuple[ChunkId, Version]], Meta(max_length=4096)]


class CredentialReq(Struct, kw_only=True):
    """`chunkfs credentials add`: a key for `role` named `name`; an export for a client's."""

    role: Annotated[str, Meta(max_length=32)]
    name: Token
    subtree: Annotated[str, Meta(max_length=limits.MAX_PATH_BYTES, pattern="^/")] = "/"
    read_only: bool = False
    maproot: Annotated[int, Meta(ge=-1, le=limits.MAX_UID)] = -1
    min_goal: Annotated[int, Meta(ge=1, le=16)] = 1  # the goals the export may set
    max_goal: Annotated[int, Meta(ge=1, le=16)] = 16
    networks: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = []  # CIDRs; empty: any

    def __post_init__(self) -> None:
        if self.min_goal > self.max_goal:
            raise FsError(errno.EINVAL, f"min_goal {self.min_goal} is over max_goal {self.max_goal}")
        for network in self.networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise FsError(errno.EINVAL, f"{network!r} is not a network (CIDR)") from None


class RevokeReq(Struct, kw_only=True):
    """`chunkfs credentials revoke`: the key `key_id`, or every key of `role` named `name`."""

    key_id: OptionalToken = ""
    role: Annotated[str, Meta(max_length=32)] = ""
    name: OptionalToken = ""


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
    chunk_bytes: int = 0  # sum of the chunks' lengths (one replica each): what the files refer to (logical)
    stored_bytes: int = 0  # the same over distinct chunk versions (physical, one replica each; snapshots and
    # dedup share versions, so chunk_bytes / stored_bytes is what sharing saves)
    under_goal_counted_s_ago: float = -1.0  # age of `chunks_under_goal` (-1: not counted yet)
    memory: MemoryStatus | None = None  # the metaserver's own memory, and what holds it
    locks_held: int = 0  # file locks held by clients (flock and POSIX), `chunkfs locks` lists them
    lock_waits: int = 0  # lock requests waiting now
    quotas_over_soft: list[QuotaInfo] = []  # directory quotas past a soft limit
    trash_files: int = 0  # removed files kept in the trash (their chunks too)
    default_trash_s: int = 0  # how long removed files are kept where no directory says otherwise
    failover: FailoverStatus | None = None  # with etcd: the election's state (None: no etcd)

    @property
    def sharing_ratio(self) -> float:
        """How many times over the stored chunk bytes are referred to (dedup, snapshots; 1.0: none shared)."""
        return self.chunk_bytes / self.stored_bytes if self.stored_bytes else 1.0


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
    open_leases_held: int = 0  # open leases held by clients (at most 20,000 a client)
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

    memory_hits: Bytes64 = 0
    disk_hits: Bytes64 = 0
    misses: Bytes64 = 0
    memory_bytes: Bytes64 = 0
    memory_capacity_bytes: Bytes64 = 0
    disk_bytes: Bytes64 = 0
    disk_capacity_bytes: Bytes64 = 0


class ClientReport(Struct, kw_only=True):
    """What a mount says of itself on each change-feed poll (so it adds no call of its own)."""

    host: Address
    mountpoint: Annotated[str, Meta(max_length=limits.MAX_PATH_BYTES)]
    cache: CacheStats


class ClientStatus(Struct, kw_only=True):
    id: str
    host: str
    mountpoint: str
    last_seen_s: float
    cache: CacheStats


class CorruptReport(Struct):
    """Chunk versions a chunkserver found failing their checksums (by scrub or on a read)."""

    server_id: Token
    chunks: list[tuple[ChunkId, Version]]


class CorruptReply(Struct):
    dropped: int  # replicas taken out of their records (and queued for deletion)


class FsckReq(Struct):
    """One page of a check of every file under directory (or file) `root`, depth first; `cursor`
    is where the previous page stopped (empty: start at `root`)."""

    root: Ino = 1
    cursor: Annotated[list[FsckFrame], Meta(max_length=4096)] = []
    limit: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000  # entries visited per page at most


class FsckFrame(Struct, array_like=True):
    """A directory the walk is inside: its inode, its name and the last entry done in it."""

    ino: Ino
    name: Name
    after: Name | None = None


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
    min_age_s: Seconds = 300.0  # chunk files written more recently are left alone (uploads in flight)


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
    server: Address  # address (HOST:PORT) or id
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


class EtcdMemberStatus(Struct):
    endpoint: str
    healthy: bool
    version: str = ""
    leader: bool = False  # the etcd cluster's Raft leader
    error: str = ""


class FailoverStatus(Struct):
    """The primary's view of the election (the metaserver's election.py)."""

    primary: str  # this metaserver's advertised address
    epoch: int  # the leader key's create_revision: the fencing epoch
    lease_left_s: float  # how long it may go on acknowledging without renewing its lease
    in_sync: list[str] = []  # the standbys etcd's sync record names: each may take over
    etcd: list[EtcdMemberStatus] = []  # as of the last check (every few seconds)


class StandbyStatus(Struct):
    name: str
    synchronous: bool
    in_sync: bool  # a synchronous standby in sync: changes wait for it
    acked_seq: int
    behind_batches: int
    last_poll_s: float


json_encode = msgspec.json.encode
json_decode = msgspec.json.decode
