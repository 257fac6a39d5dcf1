"""The metadata façade: the one object through which the client core talks to the metaserver.

It owns, and alone changes:
- the metadata cache (`metadata_cache.py`): lookups and getattrs answered without a call where
  it can, kept right with every change this client makes and every change the feed reports;
- the directory leases and the creates pending in them (`leases.py`): every call goes out after
  the pending creates it depends on (those in a directory it names, or of the inode it names);
  a file's own create rides on its first commit;
- the change feed (`follow_changes`): it renews the leases, answers recalls, drops from the
  cache what other clients changed, and tells a listener (the mount's kernel invalidation);
- open leases (`open_file`): the layouts of files opened here, kept in the metadata cache, so
  an open of a file that did not change, and the read of an inline one, need no call;
- write-behind (`write_behind.py`, when the mount's `write_behind_s` is above 0): the commit of
  a small file made here in a leased directory, and unlinks, rmdirs, renames and attribute
  changes of what this mount made in directories it holds the lease on, are answered here at
  once and sent in ordered batches. Nobody else can see those directories before a recall, and a
  recall (or a lapse, a give-back, fsync, fsyncdir, the time bound) sends the queue first. A
  request that names an inode a queued change names goes after the queue; a change the
  metaserver must answer goes after the whole queue, so the metaserver sees this mount's changes
  in the order they were made.

It calls the plain metaserver client (`protocol.meta_client`) and nothing above it: no open
file, no door. Callers name inodes as the client sees them (1 is the client's root).
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import msgspec
import trio

from chunkfs import OPEN_TRUST_S, request_id
from chunkfs.client.leases import FEED_WAIT_S, Leases, PendingCreate
from chunkfs.client.metadata_cache import MetadataCache
from chunkfs.client.write_behind import WriteBehind
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient, named_inodes

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_S = 20.0  # the change-feed poll of a client without leases
OPEN_POLL_S = 1.0  # ... of a client holding open leases (answered within OPEN_TRUST_S, see open_file)


class ChangeListener(Protocol):
    """Told what other clients changed, after the cache forgot it (the mount's kernel caches)."""

    async def entry_changed(self, parent: int, name: bytes) -> None: ...

    async def inode_changed(self, ino: int) -> None: ...

    async def feed_reset(self) -> None:
        """The feed was cut (metaserver restart): anything may have changed."""


class Metadata:
    def __init__(self, server: MetaClient, cache: MetadataCache, *, leases: bool = True,
                 write_behind_s: float = 0.0) -> None:
        """`leases`: hold the directories this client makes (see leases.py); `write_behind_s`:
        answer changes in them here and send them within that many seconds (0: none)."""
        self.server = server
        self.cache = cache
        self.leases: Leases | None = Leases(server) if leases else None
        self.write_behind = WriteBehind(server, write_behind_s) if leases and write_behind_s > 0 else None
        self.nursery: trio.Nursery | None = None  # set by the client core: recalls are answered in it
        self.feed_seq: int | None = None
        self.feed_epoch = ""  # the feed's epoch feed_seq counts in (changes.py)
        self.changes_applied = 0
        self._feed_advanced = trio.Event()  # set (and replaced) each time feed_seq moves on
        self.feed_cuts = 0  # polls of the change feed that failed
        self._cuts_answered = 0  # feed_cuts as of the last poll answered
        self.opens_leased = 0  # opens answered from an open lease, without a call
        self._feed_trusted_until = 0.0  # trio time: open leases are trusted until then

    @property
    def client_id(self) -> str:
        return self.server.client_id

    # ---- pending creates ----------------------------------------------------------------------------
    async def _before(self, *inodes: int) -> None:
        """Send the queued changes and pending creates a request naming `inodes` depends on."""
        behind = self.write_behind
        if behind is not None and not behind.idle and behind.touches(inodes):
            await behind.flush()
        if self.leases is None or not self.leases.pending_files:
            return
        for ino in inodes:
            for pending in self.leases.pending_in(ino):
                await self._send_create(pending)

    async def _before_change(self, *inodes: int) -> None:
        """Before a change the metaserver answers: everything queued, then what `_before` sends."""
        if self.write_behind is not None:
            await self.write_behind.flush()
        await self._before(*inodes)

    async def send_pending(self, ino: int) -> None:
        """Send every change queued here, and the create of file `ino` or of every file pending
        in directory `ino` (fsyncdir, a lock)."""
        await self._before_change(ino)

    async def sync(self, *inodes: int) -> None:
        """A durability point (fsync, fsyncdir): return once every change answered here is
        durable on the metaserver, and raise the write-back error of a change that named one
        of `inodes` (once)."""
        if self.write_behind is not None:
            await self.write_behind.flush()
            self.write_behind.take_error(*inodes)

    def take_error(self, ino: int) -> None:
        """Raise (once) the write-back error of a change that named `ino` (a close reports it)."""
        if self.write_behind is not None:
            self.write_behind.take_error(ino)

    async def _send_create(self, pending: PendingCreate) -> None:
        async with pending.lock:
            if pending.sent:
                return
            assert self.leases is not None
            try:
                await self._create(pending.req)
            except FsError:  # it will never exist: its commit must not try again
                self.leases.create_sent(pending)
                raise
            self.leases.create_sent(pending)

    def pending_attr(self, ino: int) -> r.Attr | None:
        """The attributes file `ino` was created with here, if its create is not sent yet."""
        pending = self.leases.pending_files.get(ino) if self.leases is not None else None
        return pending.attr if pending is not None else None

    def created_here(self, req: r.CreateReq, attr: r.Attr) -> None:
        """A file was created in leased directory `req.parent` without a call: its create is
        sent with its first commit, or before anything that needs it. The directory's times
        move as the metaserver will move them."""
        assert self.leases is not None
        self.leases.created_here(PendingCreate(req, attr))
        self._directory_changed_here(req.parent, attr.ctime_ns)

    def _directory_changed_here(self, ino: int, when_ns: int, links: int = 0) -> None:
        """An entry of directory `ino` was made or removed here without a call: its times (and
        link count) move as the metaserver will move them."""
        before = self.cache.attr(ino)
        if before is not None:
            self.cache.put_attr(msgspec.structs.replace(before, mtime_ns=when_ns, ctime_ns=when_ns,
                                                        nlink=before.nlink + links))

    # ---- reads ------------------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> r.Attr:
        known = self.cache.lookup(parent, name)
        if known is not None:
            return known
        await self._before(parent)
        generation = self.cache.generation
        attr = await self.server.lookup(parent, name)
        self.cache.put_entry(parent, name, attr, generation)
        return attr

    async def getattr(self, ino: int) -> r.Attr:
        known = self.cache.attr(ino)
        if known is not None:
            return known
        await self._before(ino)
        generation = self.cache.generation
        attr = await self.server.getattr(ino)
        self.cache.put_attr(attr, generation)
        return attr

    async def readdir(self, ino: int, after: bytes | None, limit: int = 1000, xattr: bytes | None = None
                      ) -> list[r.DirEntry]:
        await self._before(ino)
        generation = self.cache.generation
        entries = await self.server.readdir(ino, after, limit, xattr)
        self.cache.listed(ino, entries, generation)
        return entries

    async def open_file(self, ino: int, leased_ok: bool = True) -> r.FileLayout:
        """The committed state of file `ino` (close-to-open): from the open lease this client
        holds on it while the change feed is answered (no call; another client's change is
        applied here before its writer's call returns, see metaserver/open_leases.py), else
        from the metaserver, with a new lease. `leased_ok=False` always asks the metaserver."""
        if leased_ok and trio.current_time() < self._feed_trusted_until:
            layout = self.cache.layout(ino)
            if layout is not None:
                self.opens_leased += 1
                return layout
        await self._before(ino)
        generation = self.cache.generation
        layout = await self.server.open_file(ino, lease=self.cache.enabled)
        self.cache.put_attr(layout.attr, generation)
        if layout.leased:
            self.cache.put_layout(layout, generation)
        return layout

    async def _plain(self, ino: int, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, after the creates a request naming `ino` needs; nothing cached changes."""
        await self._before(ino)
        return await call()

    async def parent(self, ino: int) -> r.Attr:
        return await self._plain(ino, lambda: self.server.parent(ino))

    async def readlink(self, ino: int) -> bytes:
        return await self._plain(ino, lambda: self.server.readlink(ino))

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self._plain(ino, lambda: self.server.getxattr(ino, name))

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self._plain(ino, lambda: self.server.listxattr(ino))

    async def statfs(self) -> r.Statfs:
        return await self.server.statfs()

    async def reserve(self, count: int) -> r.Reservation:
        return await self.server.reserve(count)

    async def quota_size_limit(self, ino: int) -> int:
        """The size file `ino` may grow to under the quotas above it (-1: no limit); a file
        whose create is pending here is asked for by its directory (the create stays pending)."""
        await self._before(ino)  # a queued commit (write-behind) of it goes first
        pending = self.leases.pending_files.get(ino) if self.leases is not None else None
        parent = pending.req.parent if pending is not None and not pending.sent else 0
        return await self.server.quota_size_limit(ino, parent)

    async def find_contents(self, contents: list[r.DedupReq]) -> list[r.DedupHit | None]:
        return await self.server.find_contents(contents)

    async def read_tokens(self, chunks: list[tuple[int, int]]) -> list[str]:
        return await self.server.read_tokens(chunks)

    async def token_credential(self) -> bytes | None:
        return await self.server.token_credential()

    async def release_orphan(self, ino: int) -> None:
        await self._before_change(ino)
        await self.server.release_orphan(ino)

    # ---- changes made here ---------------------------------------------------------------------------
    async def _changing(self, ino: int, call: Callable[[], Awaitable[r.Attr]]) -> r.Attr:
        """`call()` changes `ino` and answers its new attributes."""
        self.cache.changed(ino)
        generation = self.cache.generation
        attr = await call()
        self.cache.put_attr(attr, generation)
        return attr

    async def setattr(self, req: r.SetattrReq) -> r.Attr:
        if self.write_behind is not None:
            await self.write_behind.room()
            attr = self._setattr_here(req)
            if attr is not None:
                return attr
        await self._before_change(req.ino)
        return await self._changing(req.ino, lambda: self.server.setattr(req))

    async def set_goal(self, ino: int, goal: int, recursive: bool = False) -> r.Attr:
        await self._before_change(ino)
        return await self._changing(ino, lambda: self.server.set_goal(ino, goal, recursive))

    async def set_trash_time(self, ino: int, seconds: int, recursive: bool = False) -> r.Attr:
        await self._before(ino)
        return await self._changing(ino, lambda: self.server.trash_time(ino, seconds, recursive))

    async def commit(self, req: r.CommitReq) -> r.Attr:
        """Commit a file's new content; its create goes with it if that is still pending."""
        pending = self.leases.pending_files.get(req.ino) if self.leases is not None else None
        if pending is None:
            await self._before_change(*named_inodes(req))
            return await self._commit(req)
        assert self.leases is not None
        await self._before_change()
        async with pending.lock:
            req.create = None if pending.sent else pending.req
            try:
                attr = await self._commit(req)
            except FsError:  # a create refused: the file does not exist, never send it again
                if req.create is not None:
                    self.leases.create_sent(pending)
                raise
            if req.create is not None:
                self.leases.create_sent(pending)
            return attr

    async def commit_under_name(self, req: r.CommitReq, name: bytes, flags: int = 0) -> r.Attr:
        """A new file made whole in one call and one metaserver transaction: created (under the
        temporary name of `req.create`), given its content and xattrs (`req.inline`,
        `req.xattrs`), then renamed onto `name` in its directory (`flags` as renameat2's:
        RENAME_NOREPLACE). Nobody sees the temporary name; if the rename is refused (EEXIST,
        EISDIR), the file is removed again and its error raised."""
        create = req.create
        assert create is not None and create.ino == req.ino
        parent = create.parent
        await self._before_change(parent)
        self.cache.changed(parent)
        generation = self.cache.generation
        rename = r.RenameReq(parent, create.name, parent, name, flags)
        try:
            committed, renamed = await self.server.batch([("commit", req, 0), ("rename", rename, 0)],
                                                         (request_id.new(), True))
        finally:
            self.cache.forget_entry(parent, name)
        attr = self.server.batch_reply(committed, r.Attr)
        assert attr is not None
        try:
            moved = self.server.batch_reply(renamed, r.Renamed)
        except FsError:
            with trio.CancelScope(shield=True):
                await self.server.remove(parent, create.name, is_dir=False)
            raise
        assert moved is not None
        for ino in moved.moved:
            if ino != attr.ino:
                self.cache.forget_inode(ino)
        for directory in moved.parents:
            self.cache.put_attr(directory, generation)
        self.cache.put_attr(attr, generation)
        self.cache.put_entry(parent, name, attr)
        if self.leases is not None:
            self.leases.removed(parent, name)
            self.leases.added(parent, name, (attr.ino, attr.mode))
        return attr

    async def concat(self, req: r.ConcatReq) -> r.Attr:
        """Append the sources' chunks to `req.ino` by reference (the metaserver's concat)."""
        await self._before_change(req.ino, *req.sources)
        for source in req.sources:
            self.cache.changed(source)
        return await self._changing(req.ino, lambda: self.server.concat(req))

    async def _commit(self, req: r.CommitReq) -> r.Attr:
        attr = await self._changing(req.ino, lambda: self.server.commit(req))
        if req.create is not None:  # the name is new, as in create()
            self.cache.put_entry(req.create.parent, req.create.name, attr)
        return attr

    async def create(self, req: r.CreateReq) -> r.Attr:
        await self._before_change(req.parent)
        return await self._create(req)

    async def _create(self, req: r.CreateReq) -> r.Attr:
        """The directory's new attributes follow from the answer (the metaserver stamps the
        directory's mtime and ctime with the new entry's ctime, and a subdirectory adds a
        link), so the kernel's getattr of the directory after each create needs no call,
        unless anything else changed it meanwhile."""
        before = self.cache.attr(req.parent)
        self.cache.changed(req.parent)
        generation = self.cache.generation
        asked_at = trio.current_time()
        try:
            attr = await self.server.create(req)
        except BaseException:
            self.cache.changed(req.parent)
            raise
        is_dir = stat.S_ISDIR(attr.mode)
        if before is not None and self.cache.unchanged_since(req.parent, generation):
            self.cache.put_attr(msgspec.structs.replace(before, mtime_ns=attr.ctime_ns, ctime_ns=attr.ctime_ns,
                                                        nlink=before.nlink + is_dir))
        else:
            self.cache.changed(req.parent)
        self.cache.put_entry(req.parent, req.name, attr)  # a new name: nothing older to be stale
        if self.leases is not None:
            self.leases.added(req.parent, req.name, (attr.ino, attr.mode))
            if req.lease and is_dir:
                surplus = self.leases.granted(attr.ino, asked_at)
                if surplus and self.nursery is not None:
                    self.nursery.start_soon(self.give_back, surplus)
        return attr

    async def link(self, ino: int, parent: int, name: bytes) -> r.Attr:
        await self._before_change(ino, parent)
        self.cache.changed(ino)
        try:
            attr = await self.server.link(ino, parent, name)
        finally:
            self.cache.changed(parent)
        self.cache.put_entry(parent, name, attr)
        if self.leases is not None:
            self.leases.linked(ino)
            self.leases.added(parent, name)
        return attr

    async def remove(self, parent: int, name: bytes, is_dir: bool, open_here: list[int] | None = None) -> int:
        if self.write_behind is not None:
            await self.write_behind.room()
            answered_here = self._remove_here(parent, name, is_dir, open_here or [])
            if answered_here is not None:
                return answered_here
        await self._before_change(parent)
        self.cache.changed(parent)
        generation = self.cache.generation
        try:
            removed = await self.server.remove(parent, name, is_dir, open_here)
        finally:
            self.cache.forget_entry(parent, name)
        # the directory as the remove left it, unless another client's change was heard of meanwhile
        self.cache.put_attr(removed.parent, generation)
        ino = removed.ino
        self.cache.forget_inode(ino)
        if self.leases is not None:
            self.leases.removed(parent, name)
            if is_dir:
                self.leases.forget(ino)
        return ino

    async def rename(self, req: r.RenameReq) -> list[int]:
        if self.write_behind is not None:
            await self.write_behind.room()
            answered_here = self._rename_here(req)
            if answered_here is not None:
                return answered_here
        await self._before_change(req.old_parent, req.new_parent)
        self.cache.changed(req.old_parent)
        self.cache.changed(req.new_parent)
        generation = self.cache.generation
        moved: list[int] = []
        try:
            renamed = await self.server.rename(req)
            moved = renamed.moved
            if self.leases is not None:
                self.leases.removed(req.old_parent, req.old_name)
                self.leases.added(req.new_parent, req.new_name)
                if req.flags & r.RENAME_EXCHANGE:
                    self.leases.added(req.old_parent, req.old_name)
        finally:
            self.cache.forget_entry(req.old_parent, req.old_name)
            self.cache.forget_entry(req.new_parent, req.new_name)
            for ino in moved:
                self.cache.forget_inode(ino)
        # the directories as the rename left them (see `remove`)
        for attr in renamed.parents:
            self.cache.put_attr(attr, generation)
        return moved

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self._before_change(ino)
        self.cache.changed(ino)
        try:
            await self.server.setxattr(ino, name, value, flags)
        finally:
            self.cache.changed(ino)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self._before_change(ino)
        self.cache.changed(ino)
        try:
            await self.server.removexattr(ino, name)
        finally:
            self.cache.changed(ino)

    # ---- changes answered here (write-behind) --------------------------------------------------------
    async def commit_behind(self, req: r.CommitReq, attr: r.Attr) -> r.Attr | None:
        """Queue the commit of a small file (`req.inline`) made here in a leased directory and
        answer `attr`, the file as it will be; None where the metaserver must answer now (no
        write-behind, the file is not in a directory leased here, its create being sent)."""
        if self.write_behind is None or self.leases is None:
            return None
        await self.write_behind.room()
        pending = self.leases.pending_files.get(req.ino)
        if pending is not None:
            if pending.lock.locked() or self.leases.lease(pending.req.parent) is None:
                return None
            req.create = pending.req
            self.leases.create_sent(pending)  # it travels in the queue: what needs it waits for the queue
        elif self.leases.home(req.ino) is None:
            return None
        behind = self.write_behind
        create = req.create

        def applied(result: r.Attr | None, error: FsError | None) -> None:
            if error is not None and create is not None:  # never made: forget it here too
                self.cache.forget_entry(create.parent, create.name)
                assert self.leases is not None
                self.leases.removed(create.parent, create.name)
            elif result is not None and not behind.touches((req.ino,)):
                self.cache.put_attr(result)

        home = self.leases.homes.get(req.ino)  # a listing of it carries the file's attributes: it waits too
        behind.add("commit", req, r.Attr, at_ns=attr.ctime_ns, also=() if home is None else (home,), applied=applied)
        self.cache.forget_inode(req.ino)  # its open-lease layout is the old content
        self.cache.put_attr(attr)
        if create is not None:
            self.cache.put_entry(create.parent, create.name, attr)
        return attr

    def _setattr_here(self, req: r.SetattrReq) -> r.Attr | None:
        """Mode, owner or time changes of what this mount made in a directory leased here (its
        only name), queued; None where the metaserver must answer (a size change, xattrs (an
        ACL follows the mode there), attributes not at hand)."""
        assert self.leases is not None and self.write_behind is not None
        before = self.cache.attr(req.ino)
        if req.size is not None or before is None or before.has_xattrs or self.leases.home(req.ino) is None:
            return None
        if stat.S_ISDIR(before.mode) and self.leases.lease(req.ino) is None:  # another client may know it
            return None
        changes = {name: value for name in ("uid", "gid", "atime_ns", "mtime_ns")
                   if (value := getattr(req, name)) is not None}
        if req.mode is not None:
            changes["mode"] = stat.S_IFMT(before.mode) | (req.mode & 0o7777)
        attr = msgspec.structs.replace(before, ctime_ns=time.time_ns(), **changes)
        self.write_behind.add("setattr", req, r.Attr, at_ns=attr.ctime_ns,
                              also=(self.leases.homes[req.ino],))  # as in commit_behind
        self.cache.forget_inode(req.ino)  # and the open-lease layout with the old attributes
        self.cache.put_attr(attr)
        return attr

    def _remove_here(self, parent: int, name: bytes, is_dir: bool, open_here: list[int]) -> int | None:
        """An unlink (or rmdir of an empty directory leased here) of an entry this mount made
        in a directory leased here, queued; None where the metaserver must answer (anything
        else, a mismatch of type that it answers with an errno, an inode open here)."""
        assert self.leases is not None and self.write_behind is not None
        if is_dir:
            # the metaserver answers an rmdir: answered here, the parent's link count was seen
            # one too high afterwards (the POSIX model: mkdir b, mkdir b/b, rmdir b/b, stat b)
            return None
        known = self.leases.known(parent, name)
        if known is None or name in self.leases.held[parent].pending:
            return None
        ino, mode = known
        if ino in open_here or stat.S_ISDIR(mode):
            return None
        now = time.time_ns()
        self.write_behind.add("remove", r.RemoveReq(parent, name, False, "", []), r.Removed, at_ns=now, also=(ino,))
        self.cache.forget_entry(parent, name)
        self.cache.forget_inode(ino)
        self.leases.removed(parent, name)
        self._directory_changed_here(parent, now)
        return ino

    def _rename_here(self, req: r.RenameReq) -> list[int] | None:
        """A rename of a file (not a directory) this mount made, within or between directories
        leased here, over nothing or over another such file, queued; None where the metaserver
        must answer. Answers as the metaserver does: the inodes moved and replaced."""
        assert self.leases is not None and self.write_behind is not None
        leases = self.leases
        moved = leases.known(req.old_parent, req.old_name)
        target = leases.lease(req.new_parent)
        if moved is None or target is None or stat.S_ISDIR(moved[1]) or req.flags & ~r.RENAME_NOREPLACE \
                or (req.old_parent, req.old_name) == (req.new_parent, req.new_name) \
                or req.old_name in leases.held[req.old_parent].pending:
            return None
        replaced = target.known.get(req.new_name)
        if req.new_name in target.names and (req.flags or replaced is None or stat.S_ISDIR(replaced[1])
                                             or replaced[0] in req.open_here or req.new_name in target.pending):
            return None
        answer = [moved[0], *([replaced[0]] if replaced is not None else [])]
        now = time.time_ns()
        self.write_behind.add("rename", req, r.Renamed, at_ns=now, also=answer)
        attr = self.cache.attr(moved[0])
        self.cache.forget_entry(req.old_parent, req.old_name)
        self.cache.forget_entry(req.new_parent, req.new_name)
        leases.removed(req.old_parent, req.old_name)
        leases.removed(req.new_parent, req.new_name)
        leases.added(req.new_parent, req.new_name, moved)
        if attr is not None:
            self.cache.put_entry(req.new_parent, req.new_name, msgspec.structs.replace(attr, ctime_ns=now))
        for directory in {req.old_parent, req.new_parent}:
            self._directory_changed_here(directory, now)
        return answer

    # ---- leases -------------------------------------------------------------------------------------
    async def give_back(self, inodes: list[int]) -> None:
        """Stop using the leases on `inodes` at once, send their pending creates, then tell the
        metaserver (a recall, too many leases, a reset of the feed, the end of the client)."""
        if self.leases is None:
            return
        leased = [(ino, self.leases.held[ino]) for ino in inodes if ino in self.leases.held]
        for _ino, directory in leased:
            directory.returning = True
        try:
            if self.write_behind is not None:
                await self.write_behind.flush()
            for ino, directory in leased:
                for pending in list(directory.pending.values()):
                    await self._send_create(pending)
                if self.leases.held.get(ino) is directory:
                    self.leases.forget(ino)
            if inodes:
                await self.server.release_leases(list(inodes))
        except (FsError, TransportError) as exc:  # the metaserver takes them back when they run out
            log.warning("giving back %d directory leases failed: %s", len(inodes), exc)

    async def give_back_all(self) -> None:
        if self.leases is not None:
            await self.give_back(list(self.leases.held))

    def _recall(self, inodes: list[int]) -> bool:
        """The metaserver wants these back: answered in the background, the feed goes on.
        False if every one of them is being given back already."""
        assert self.leases is not None
        new = [ino for ino in inodes if ino not in self.leases.giving_back]
        if not new or self.nursery is None:
            return False
        self.leases.giving_back.update(new)
        self.nursery.start_soon(self._answer_recall, new)
        return True

    async def _answer_recall(self, inodes: list[int]) -> None:
        assert self.leases is not None
        try:
            await self.give_back(inodes)
        finally:
            self.leases.giving_back.difference_update(inodes)

    # ---- the change feed -------------------------------------------------------------------------------
    async def follow_changes(self, listener: ChangeListener | None = None,
                             report: Callable[[], r.ClientReport] | None = None) -> None:
        """Follow the metaserver's change feed for as long as the client runs. `report` (how this
        client is doing) rides on every poll, for `chunkfs status`."""
        while True:
            # leases are renewed by each poll; open leases are trusted OPEN_TRUST_S from the send
            # of the last poll answered, so it must be answered well within that
            wait_s = OPEN_POLL_S if self.cache.has_layouts else WAIT_S if self.leases is None else FEED_WAIT_S
            sent_at = trio.current_time()
            try:
                batch = await self.server.changes(self.feed_seq if self.feed_seq is not None else 0,
                                                  0 if self.feed_seq is None else wait_s,
                                                  report() if report is not None else None, self.feed_epoch)
            except (FsError, TransportError) as exc:
                self._feed_trusted_until = 0.0
                self.feed_cuts += 1
                log.warning("change feed unavailable (%s); retrying", exc)
                await trio.sleep(1)
                continue
            # another epoch: the metaserver restarted (or another took over) and its seqs are
            # not ours, whatever they say; the changes between are lost, as after `reset`
            reset = batch.reset or (self.feed_seq is not None and batch.epoch != self.feed_epoch)
            if not reset:
                self._feed_trusted_until = sent_at + OPEN_TRUST_S
            if self.leases is not None and not reset:
                self.leases.fed(sent_at)
                if batch.recalls and not self._recall(batch.recalls):
                    await trio.sleep(0.01)  # being given back already: no busy polling meanwhile
            if self.feed_seq is not None and reset:
                if self.leases is not None:  # the metaserver restarted: give every lease back
                    self._recall(list(self.leases.held))
                log.warning("change feed was reset; dropping every cached attribute")
                self.cache.clear()
                if listener is not None:
                    await listener.feed_reset()
            elif self.feed_seq is not None:
                for change in batch.changes:
                    if change.origin != self.client_id:
                        await self._apply(change, listener)
            if batch.locks_lost:  # this client's session was over meanwhile: as a cut of the feed
                self.feed_cuts += 1
            self.feed_seq, self.feed_epoch = batch.seq, batch.epoch
            self._cuts_answered = self.feed_cuts
            self._feed_advanced.set()
            self._feed_advanced = trio.Event()

    async def feed_changed(self, epoch: str, cuts: int) -> tuple[str, int]:
        """The feed's (epoch, cuts) as of its last answered poll, once they are no longer
        (`epoch`, `cuts`): it is answered by another metaserver, or again after a cut."""
        while (self.feed_epoch, self._cuts_answered) == (epoch, cuts):
            await self._feed_advanced.wait()
        return self.feed_epoch, self._cuts_answered

    async def caught_up(self, seq: int, epoch: str, timeout_s: float = 5.0) -> None:
        """Return once the changes of the feed up to `seq` of `epoch` are applied here (a lock
        taken after another client's changes sees them), or at once if this client does not
        follow that feed; after `timeout_s` in any case (the feed is late: as without locks)."""
        with trio.move_on_after(timeout_s):
            while self.feed_seq is not None and self.feed_epoch == epoch and self.feed_seq < seq:
                await self._feed_advanced.wait()

    async def _apply(self, change: r.Change, listener: ChangeListener | None) -> None:
        for parent, name in change.entries:
            self.cache.forget_entry(parent, name)
            if listener is not None:
                await listener.entry_changed(parent, name)
        for ino in change.inodes:
            self.cache.forget_inode(ino)
            if listener is not None:
                await listener.inode_changed(ino)
        self.changes_applied += 1
