"""Client for the metaserver's API: one method per operation, typed records in and out."""

from __future__ import annotations

import errno
import stat
from typing import Any, TypeVar, overload

import msgspec

from chunkfs import auth, chunk_tokens
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.disk_check import DiskCheckPage, DiskCheckReq
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.metaserver_addresses import MetaserverAddresses
from chunkfs.protocol.transport import Response

T = TypeVar("T")


CLIENT_HEADER = "X-Chunkfs-Client"
STEP_DOWN_PATH = "/v1/ha/step-down"  # with etcd failover: the primary gives its role up
FAILOVER_ATTEMPT_S = 8.0
"""With several metaservers, how long one attempt waits for its answer before the call is tried
on the next: a primary that hangs (SIGSTOP, a dead disk) is left after this, within the
clients' `retry_s` (15 s). With one metaserver an attempt waits the transport's time-out."""
QUICK_SERVER_OPS = frozenset({"hello", "corrupt"})  # a chunkserver's: answered at once (the others are admins')
LONG_POLL_OPS = {"lock": 10.0, "fsck": 30.0}  # seconds these may take by design, added to the above
ROOT_INO = 1
INODE_FIELDS = ("ino", "parent", "old_parent", "new_parent")


def named_inodes(req: Any) -> set[int]:
    """Every inode a request names (and the directory of the create a commit carries)."""
    inodes = {value for f in INODE_FIELDS if isinstance(value := getattr(req, f, None), int)}
    create = getattr(req, "create", None)
    if create is not None:
        inodes.add(create.parent)
    return inodes


def carries_create(op: str, req: Any) -> bool:
    """A request that creates a file this client made under a lease (leases.py of the mount)."""
    return (op == "create" and getattr(req, "ino", 0) != 0) or (op == "commit" and req.create is not None)


class SubtreeView:
    """A mount of a subdirectory (`HOST:PORT:/sub`) shows directory `root_ino` as its root: the
    kernel's inode 1 becomes `root_ino` on the way out and `root_ino` becomes 1 on the way in.
    Names above the root are never asked for (the kernel resolves `..` of the root itself)."""

    def __init__(self, root_ino: int = ROOT_INO) -> None:
        self.root_ino = root_ino

    def outgoing(self, request: Any) -> Any:
        if self.root_ino == ROOT_INO or not isinstance(request, msgspec.Struct):
            return request
        changes: dict[str, Any] = {f: self.root_ino for f in INODE_FIELDS if getattr(request, f, None) == ROOT_INO}
        create = getattr(request, "create", None)
        if create is not None:
            changes["create"] = self.outgoing(create)
        return msgspec.structs.replace(request, **changes) if changes else request

    def ino_in(self, ino: int) -> int:
        return ROOT_INO if ino == self.root_ino else ino

    def incoming(self, reply: T) -> T:
        if self.root_ino == ROOT_INO:
            return reply
        if isinstance(reply, r.Attr):
            reply.ino = self.ino_in(reply.ino)
        elif isinstance(reply, (r.DirEntry, r.FileLayout)):
            self.incoming(reply.attr)
        elif isinstance(reply, r.ChangeBatch):
            for change in reply.changes:
                change.inodes = [self.ino_in(ino) for ino in change.inodes]
                change.entries = [(self.ino_in(parent), name) for parent, name in change.entries]
        elif isinstance(reply, list):
            for item in reply:
                self.incoming(item)
        return reply


class MetaClient:
    def __init__(self, http: SignedHttp, address: str, client_id: str = "", root_ino: int = ROOT_INO) -> None:
        """`address`: HOST:PORT of the metaserver, or several (`a:9520,b:9520`) of which the
        primary is found and followed across failovers (metaserver_addresses.py);
        `client_id` names this client in the change feed, so it can skip its own changes;
        `root_ino` is the directory shown as the root (a subdirectory mount)."""
        self.http = http
        self.servers = MetaserverAddresses(address)
        self.attempt_timeout_s = FAILOVER_ATTEMPT_S if len(self.servers.addresses) > 1 else None
        self.client_id = client_id
        self.headers = {"Content-Type": "application/json", CLIENT_HEADER: client_id}
        self.view = SubtreeView(root_ino)

    @overload
    async def call(self, op: str, request: Any) -> None: ...
    @overload
    async def call(self, op: str, request: Any, reply_type: type[T]) -> T: ...

    async def call(self, op: str, request: Any, reply_type: type[T] | None = None) -> T | None:
        response = await self._post_fs(op, r.json_encode(self.view.outgoing(request)))
        if reply_type is None:
            return None
        return self.view.incoming(msgspec.json.decode(response.content, type=reply_type))

    async def _post_fs(self, op: str, content: bytes, call_id: tuple[str, bool] | None = None) -> Response:
        """`/v1/fs/{op}` on the current primary, moved on across failovers."""
        attempt_timeout_s = self.attempt_timeout_s
        if attempt_timeout_s is not None and op in LONG_POLL_OPS:
            attempt_timeout_s += LONG_POLL_OPS[op]
        return await self.http.request(
            "POST", f"/v1/fs/{op}", content=content, headers=self.headers, call_id=call_id,
            servers=self.servers, attempt_timeout_s=attempt_timeout_s,
        )

    # -- namespace ------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> r.Attr:
        return await self.call("lookup", r.LookupReq(parent, name), r.Attr)

    async def getattr(self, ino: int) -> r.Attr:
        return await self.call("getattr", r.InodeReq(ino), r.Attr)

    async def setattr(self, req: r.SetattrReq) -> r.Attr:
        return await self.call("setattr", req, r.Attr)

    async def create(self, req: r.CreateReq) -> r.Attr:
        return await self.call("create", req, r.Attr)

    async def link(self, ino: int, parent: int, name: bytes) -> r.Attr:
        return await self.call("link", r.LinkReq(ino, parent, name), r.Attr)

    async def remove(self, parent: int, name: bytes, is_dir: bool, open_here: list[int] | None = None
                     ) -> r.Removed:
        """The inode the name was of and the directory's new attributes. `open_here`: inodes
        this client has open, kept as orphans if this was their last name."""
        return await self.call("remove", r.RemoveReq(parent, name, is_dir, self.client_id if open_here else "",
                                              open_here or []), r.Removed)

    async def release_orphan(self, ino: int) -> None:
        """The last close of a file unlinked while open here: the metaserver frees it."""
        await self.call("release_orphan", r.InodeReq(ino))

    async def rename(self, req: r.RenameReq) -> r.Renamed:
        """The inodes moved or replaced (see RenameReq.open_here for replaced open files) and
        the directories' new attributes."""
        return await self.call("rename", req, r.Renamed)

    async def readdir(self, ino: int, after: bytes | None, limit: int = 1000, xattr: bytes | None = None
                      ) -> list[r.DirEntry]:
        """A page of entries after `after`; with `xattr`, each entry's value of it (None: unset)."""
        return await self.call("readdir", r.ReaddirReq(ino, after, limit, xattr), list[r.DirEntry])

    async def parent(self, ino: int) -> r.Attr:
        """The root's parent is the root itself, also for a subdirectory mount."""
        return await self.call("getattr" if ino == ROOT_INO else "parent", r.InodeReq(ino), r.Attr)

    async def readlink(self, ino: int) -> bytes:
        return await self.call("readlink", r.InodeReq(ino), bytes)

    async def resolve(self, path: bytes) -> r.Attr:
        return await self.call("resolve", r.PathReq(path), r.Attr)

    async def subtree_root(self, subdir: str) -> int:
        """The inode of the directory `subdir`, to be shown as a client's root (a mount of a
        subdirectory, an API client of one): ENOTDIR if it is not a directory, EACCES if it is
        outside the export of the credential this client signs with."""
        attr = await self.resolve(subdir.encode())
        if not stat.S_ISDIR(attr.mode):
            raise FsError(errno.ENOTDIR, f"{subdir} is not a directory")
        return attr.ino

    # -- xattrs -----------------------------------------------------------------------------
    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.call("getxattr", r.XattrReq(ino, name), bytes)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.call("setxattr", r.XattrReq(ino, name, value, flags))

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.call("listxattr", r.InodeReq(ino), list[bytes])

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.call("removexattr", r.XattrReq(ino, name))

    # -- file data --------------------------------------------------------------------------
    async def open_file(self, ino: int, lease: bool = False) -> r.FileLayout:
        """The file's committed state; with `lease`, also an open lease on it if the answer says `leased`."""
        return await self.call("open", r.OpenReq(ino, lease), r.FileLayout)

    async def reserve_inodes(self, count: int) -> int:
        """The first of `count` inode numbers this client may create files with."""
        return await self.call("reserve_inodes", r.ReserveReq(count), int)

    async def release_leases(self, inodes: list[int]) -> None:
        await self.call("release_leases", r.LeaseReq(inodes))

    async def reserve(self, count: int) -> r.Reservation:
        return await self.call("reserve", r.ReserveReq(count), r.Reservation)

    async def commit(self, req: r.CommitReq) -> r.Attr:
        return await self.call("commit", req, r.Attr)

    async def batch(self, ops: list[tuple[str, Any, int]], call_id: tuple[str, bool]) -> list[r.BatchOutcome]:
        """Mutations (op, request, when it was answered: `BatchOp.at_ns`) applied in order in one
        durable transaction (see BatchReq); `call_id` as SignedHttp.request's, the same each time
        the batch is sent again. Decode each reply with `batch_reply`."""
        body = r.BatchReq([r.BatchOp(op, msgspec.Raw(r.json_encode(self.view.outgoing(req))), at_ns)
                           for op, req, at_ns in ops])
        response = await self._post_fs("batch", r.json_encode(body), call_id)
        return msgspec.json.decode(response.content, type=list[r.BatchOutcome])

    def batch_reply(self, outcome: r.BatchOutcome, reply_type: type[T] | None) -> T | None:
        """One mutation's answer in a batch, as its own call would have given it (FsError if it failed)."""
        if outcome.errno:
            raise FsError(outcome.errno, outcome.message)
        if reply_type is None:
            return None
        return self.view.incoming(msgspec.json.decode(outcome.reply, type=reply_type))

    async def chunk_sharing(self, ino: int) -> list[tuple[int, int]]:
        """(index, chunk records holding its version) for each chunk of `ino` (above 1: shared)."""
        return await self.call("chunk_sharing", r.InodeReq(ino), list[tuple[int, int]])

    async def find_contents(self, contents: list[r.DedupReq]) -> list[r.DedupHit | None]:
        """For each content (name and proof), in order, the stored version holding it for this
        client's commits (see metaserver/dedup.py), or None if the cluster holds none (or the
        proof does not match)."""
        response = await self._post_fs("dedup", r.json_encode(r.DedupBatchReq(contents)))
        hits: list[r.DedupHit | None] = msgspec.json.decode(response.content, type=list[r.DedupHit | None])
        if len(hits) != len(contents):
            raise FsError(errno.EIO, f"the metaserver answered {len(hits)} of {len(contents)} dedup questions")
        return hits

    async def read_tokens(self, chunks: list[tuple[int, int]]) -> list[str]:
        """New read tokens for these chunk versions (chunkfs.chunk_tokens), in their order."""
        return await self.call("tokens", r.TokensReq(chunks), list[str])

    async def token_credential(self) -> bytes | None:
        """What this client signs its chunk requests presenting a token with (the token key of
        the credential it signs with here, `chunkfs.chunk_tokens.holder_credential`), unwrapped
        with that credential's key; None from a metaserver that issues no tokens."""
        found = await self.call("token_key", None, r.TokenKey)
        if not found.key_id:
            return None
        key = chunk_tokens.unwrap(found.nonce, found.wrapped, auth.split_credential(self.http.secret)[1])
        return auth.credential_text(found.key_id, key.decode(errors="replace")).encode()

    async def concat(self, req: r.ConcatReq) -> r.Attr:
        """Append the sources' chunks to the file by reference (see ConcatReq); its new attributes."""
        return await self.call("concat", req, r.Attr)

    # -- file locks (chunkfs/metaserver/locks.py) ---------------------------------------------
    async def lock(self, req: r.LockReq) -> r.LockReply:
        """Take or drop a lock; a waiting one is a long poll: ask again until `granted`."""
        return await self.call("lock", req, r.LockReply)

    async def test_lock(self, req: r.LockReq) -> r.LockInfo:
        return await self.call("testlock", req, r.LockInfo)

    async def cancel_lock(self, wait_id: int) -> bool:
        """Withdraw a wait: true if it was not granted (false: the lock was, or the wait is unknown)."""
        return await self.call("cancel_lock", r.LockCancelReq(wait_id), bool)

    async def reclaim_locks(self, epoch: str, locks: list[r.LockReq]) -> r.LockReclaimReply:
        """Give back (after a restart) or check (after a cut feed) the locks this client holds."""
        return await self.call("reclaim_locks", r.LockReclaimReq(epoch, [self.view.outgoing(lock) for lock in locks]),
                               r.LockReclaimReply)

    async def locks(self, ino: int = 0) -> list[r.LockInfo]:
        """The locks held and waited for on `ino` (0: on every file)."""
        return await self.call("locks", r.LocksReq(ino), list[r.LockInfo])

    # -- cluster ----------------------------------------------------------------------------
    async def statfs(self) -> r.Statfs:
        return await self.call("statfs", r.InodeReq(1), r.Statfs)

    async def set_goal(self, ino: int, goal: int, recursive: bool = False) -> r.Attr:
        return await self.call("goal", r.GoalReq(ino, goal, recursive), r.Attr)

    async def snapshot(self, ino: int, parent: int, name: bytes, read_only: bool = False) -> r.Attr:
        """A copy of `ino` as `name` in `parent` sharing its chunks (chunkfs/metaserver/snapshots.py);
        `read_only`: every change to the copy is EROFS."""
        return await self.call("snapshot", r.SnapshotReq(ino, parent, name, read_only=read_only), r.Attr)

    async def set_read_only(self, ino: int, read_only: bool, recursive: bool = False) -> r.Attr:
        """Mark `ino` (its tree with `recursive`) read-only or writable again (an admin's call)."""
        return await self.call("read_only", r.ReadOnlyReq(ino, read_only, recursive), r.Attr)

    async def sharing_check(self) -> list[str]:
        """What is wrong with the chunk versions several files share (none: all right)."""
        return await self.call("sharing_check", r.InodeReq(ROOT_INO), list[str])

    # -- the trash (chunkfs/metaserver/trash.py) -------------------------------------------------
    async def trash_time(self, ino: int, seconds: int, recursive: bool = False) -> r.Attr:
        return await self.call("trash_time", r.TrashTimeReq(ino, seconds, recursive), r.Attr)

    async def set_dedup(self, ino: int, enabled: bool, recursive: bool = False) -> r.Attr:
        return await self.call("dedup_setting", r.DedupSettingReq(ino, enabled, recursive), r.Attr)

    async def trash_time_of(self, ino: int) -> int:
        """The retention set on `ino` (-1: none, the metaserver's default applies)."""
        return await self.call("trash_time_of", r.InodeReq(ino), int)

    async def trash_list(self, after: int = 0, limit: int = 1000, under: int = 0) -> list[r.TrashItem]:
        """Files in the trash with ids above `after`; `under`: removed from that directory or below."""
        return await self.call("trash_list", r.TrashListReq(after, limit, under), list[r.TrashItem])

    async def trash_restore(self, req: r.TrashRestoreReq) -> r.TrashRestored:
        return await self.call("trash_restore", req, r.TrashRestored)

    async def trash_purge(self, req: r.TrashPurgeReq) -> int:
        return await self.call("trash_purge", req, int)

    # -- directory quotas (chunkfs/metaserver/quotas.py) ---------------------------------------
    async def quota_set(self, req: r.QuotaSetReq) -> r.QuotaInfo:
        return await self.call("quota_set", req, r.QuotaInfo)

    async def quota_get(self, ino: int) -> r.QuotaInfo:
        """ENODATA: the directory has no quota."""
        return await self.call("quota_get", r.InodeReq(ino), r.QuotaInfo)

    async def quota_remove(self, ino: int) -> None:
        await self.call("quota_remove", r.InodeReq(ino))

    async def quota_size_limit(self, ino: int, parent: int = 0) -> int:
        """The size file `ino` may grow to under the hard limits on bytes above it (-1: none);
        `parent`: its directory, for a file whose create has not been sent yet."""
        return await self.call("quota_size_limit", r.QuotaLimitReq(ino, parent), int)

    async def quota_list(self, under: int = ROOT_INO) -> list[r.QuotaInfo]:
        """The quotas on directory `under` and below it."""
        return await self.call("quota_list", r.InodeReq(under), list[r.QuotaInfo])

    async def quota_check(self) -> list[r.QuotaCheck]:
        """The quotas whose usage differs from a recount of their trees (none: all right)."""
        return await self.call("quota_check", r.InodeReq(ROOT_INO), list[r.QuotaCheck])

    async def changes(self, since: int, wait_s: float, report: r.ClientReport | None = None,
                      epoch: str = "") -> r.ChangeBatch:
        """The changes after `since` of the feed's `epoch` (a long poll; empty: none known yet);
        `report` rides along for `chunkfs status`."""
        params: dict[str, object] = {"since": since, "wait_s": wait_s}
        if epoch:
            params["epoch"] = epoch
        if report is not None:
            params["client"] = r.json_encode(report).decode()
        response = await self.http.request(
            "GET", "/v1/changes", params=params, retry_s=wait_s + 5, headers=self.headers, servers=self.servers,
            attempt_timeout_s=None if self.attempt_timeout_s is None else wait_s + self.attempt_timeout_s)
        return self.view.incoming(msgspec.json.decode(response.content, type=r.ChangeBatch))

    async def status(self) -> r.ClusterStatus:
        response = await self.http.request("GET", "/v1/status", servers=self.servers,
                                           attempt_timeout_s=self.attempt_timeout_s)
        return msgspec.json.decode(response.content, type=r.ClusterStatus)

    async def step_down(self, primary: str) -> str:
        """The primary gives its leader key up (a switchover); the address it had. `primary`:
        the one meant (from `status().failover`), so a retry that reaches the next primary after
        the switchover does not make it step down too (it answers EINVAL)."""
        response = await self.http.request("POST", STEP_DOWN_PATH, params={"primary": primary},
                                           servers=self.servers)
        return str(response.json()["stepped_down"])

    async def servers_call(self, op: str, request: Any, reply_type: type[T]) -> T:
        """`/v1/servers/{op}`: what chunkservers and admins tell the metaserver about servers."""
        response = await self.http.request(
            "POST", f"/v1/servers/{op}", content=r.json_encode(request),
            headers={"Content-Type": "application/json"}, servers=self.servers,
            attempt_timeout_s=self.attempt_timeout_s if op in QUICK_SERVER_OPS else None,
        )  # an admin's gc or drain may take long: the transport's time-out
        return msgspec.json.decode(response.content, type=reply_type)

    async def hello(self, hello: r.ServerHello) -> r.HelloReply:
        return await self.servers_call("hello", hello, r.HelloReply)

    async def report_corrupt(self, report: r.CorruptReport) -> r.CorruptReply:
        return await self.servers_call("corrupt", report, r.CorruptReply)

    async def gc(self, dry_run: bool = False, min_age_s: float = 300.0) -> r.GcReport:
        return await self.servers_call("gc", r.GcReq(dry_run, min_age_s), r.GcReport)

    async def fsck(self, root: int, cursor: list[r.FsckFrame], limit: int = 1000) -> r.FsckPage:
        """One page of the check of every file under `root` (see `chunkfs.metaserver.fsck`)."""
        return await self.call("fsck", r.FsckReq(root, cursor, limit), r.FsckPage)

    async def check_disks(self, req: DiskCheckReq) -> DiskCheckPage:
        """One page of the check of the chunkservers' disks (see `chunkfs.metaserver.disk_check`)."""
        return await self.servers_call("fsck", req, DiskCheckPage)

    async def drain(self, server: str, draining: bool = True) -> r.ServerStatus:
        return await self.servers_call("drain", r.DrainReq(server, draining), r.ServerStatus)

    # -- credentials (admin keys only) --------------------------------------------------------
    async def credentials(self) -> list[dict[str, Any]]:
        response = await self.http.request("GET", "/v1/credentials", servers=self.servers)
        listing: list[dict[str, Any]] = response.json()
        return listing

    async def change_credentials(self, action: str, request: r.CredentialReq | r.RevokeReq) -> Any:
        """`add` (answers the credential, with the text its holder's secret file holds) or `revoke`."""
        response = await self.http.request("POST", f"/v1/credentials/{action}", servers=self.servers,
                                           content=r.json_encode(request), headers={"Content-Type": "application/json"})
        return response.json()
