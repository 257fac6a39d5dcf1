"""Upload sessions: a file stored in numbered parts over any length of time, then committed
into its target name at once. S3 multipart uploads (the gateway) and a resumable `chunkfs put`
are both sessions; tus uploads live beside them and are collected with them.

A session is a directory `/.chunkfs-uploads/ID/` (the parent made once, 1777 like /tmp, so
each caller's sessions are its own), made by the caller (0700), with the door's record of what
it is for in its `user.chunkfs.session` xattr and each part a file `part-NNNNN`, stored whole
(`staged_file`: a part shows under its name only when complete). The namespace is the record:
a session survives a restart of the gateway or of `chunkfs put`, and what a part holds is
what its file holds.

Committing (`assembled`) moves the parts' chunks into a new file by reference (the
metaserver's concat, `records.ConcatReq`): no byte is read or written again. A file's chunk i
holds its bytes [i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE), so a part's chunks can become the
object's chunks only where the part starts on a chunk boundary: every part before it must be a
whole number of chunks long (the last part may have any length). Parts of 8 MiB (awscli, boto3)
or any multiple of 4 MiB (`chunkfs put`'s, rclone with `--s3-chunk-size 8M`) are all linked;
from the first part but the last that is not
(rclone's default 5 MiB, s3cmd's 15 MiB) on, the parts are copied once into one file (the
"tail", in the session until committed), and that tail is linked after the whole-chunk parts.
A tail small enough to be kept inline (not in chunks) takes the part before it too, so the
commit is always one concat: until that call the parts are all there (a failed commit can be
tried again); the concat itself is atomic; only the rename after it can still fail (the target
made a directory meanwhile), and then the upload is lost and must be sent again.

Sessions untouched for the expiry (a part stored, the session made) are removed by
`collect_abandoned` (the gateway runs it; 24 h by default).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES
from chunkfs.client.async_file import AsyncFile
from chunkfs.client.transfers import (Progress, copy_into, file_version, is_staged_name, open_for_reading,
                                      staged_file)
from chunkfs.errors import FsError

if TYPE_CHECKING:
    from chunkfs.client.filesystem import AsyncFilesystem

log = logging.getLogger(__name__)

SESSIONS_DIR = "/.chunkfs-uploads"
XATTR_SESSION = "user.chunkfs.session"
PART_PREFIX = "part-"
TAIL_NAME = "tail"
MAX_PART_NUMBER = 99_999
COPY_PIECE_BYTES = CHUNK_SIZE
PUT_PART_BYTES = 16 * CHUNK_SIZE  # a resumable put's parts: whole chunks, so all are linked at the end
RESUMABLE_FROM_BYTES = 2 * PUT_PART_BYTES  # smaller files are put in one go (nothing much to resume)


@dataclass(frozen=True)
class StoredPart:
    number: int
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Assembly:
    """A committed session's file (`ino`, `size`, `mtime_ns`) and how it was joined: its
    first `linked_parts` by reference, `copied_bytes` copied."""

    ino: int
    size: int
    mtime_ns: int
    linked_parts: int
    copied_bytes: int


def links_for(sizes: list[int]) -> int:
    """How many leading parts (of these sizes, in order) a commit links by reference: the
    leading run of whole-chunk parts and, if only the last part is left, that one too (its
    last chunk may be short); else less the last whole-chunk part when what follows is small
    enough to be kept inline (it would be in no chunk); none if that leaves nothing to link."""
    linked = 0
    while linked < len(sizes) and sizes[linked] > 0 and sizes[linked] % CHUNK_SIZE == 0:
        linked += 1
    if linked == len(sizes) - 1 and sizes[-1] > INLINE_MAX_BYTES:
        return len(sizes)
    rest = sum(sizes[linked:])
    if linked and 0 < rest <= INLINE_MAX_BYTES:
        linked -= 1
    return linked


def session_path(session_id: str) -> str:
    if not session_id or not all(c.isalnum() or c == "-" for c in session_id) or len(session_id) > 64:
        raise FileNotFoundError(errno.ENOENT, "no such upload session", session_id)
    return f"{SESSIONS_DIR}/{session_id}"


def part_path(session_id: str, number: int) -> str:
    if not 1 <= number <= MAX_PART_NUMBER:
        raise ValueError(f"part number {number} is not in 1..{MAX_PART_NUMBER}")
    return f"{session_path(session_id)}/{PART_PREFIX}{number:05d}"


async def ensure_sessions_dir(root: AsyncFilesystem) -> None:
    """/.chunkfs-uploads, made by root, writable by all and sticky (each removes only its own),
    its trash time 0: parts removed after their commit (empty then) or with their session go at
    once, not to the trash."""
    if not await root.exists(SESSIONS_DIR):
        try:
            await root.mkdir(SESSIONS_DIR, 0o1777)
        except FileExistsError:
            return
        await root.chmod(SESSIONS_DIR, 0o1777)
        await root.set_trash_time(SESSIONS_DIR, 0)


class UploadSessions:
    """The sessions as the caller of `afs` sees them (`root`: the core as root, which makes the
    sessions directory once)."""

    def __init__(self, afs: AsyncFilesystem, root: AsyncFilesystem) -> None:
        self.afs, self.root = afs, root

    async def create(self, record: bytes, session_id: str | None = None) -> str:
        """A new session holding `record` (the door's description of it); its id. A chosen
        `session_id` that exists already: FileExistsError."""
        await ensure_sessions_dir(self.root)
        session_id = session_id or secrets.token_hex(16)
        path = session_path(session_id)
        await self.afs.mkdir(path, 0o700)
        await self.afs.setxattr(path, XATTR_SESSION, record)
        return session_id

    async def record(self, session_id: str) -> tuple[bytes, os.stat_result]:
        """The session's record and its directory's stat; FileNotFoundError if there is none."""
        path = session_path(session_id)
        try:
            return await self.afs.getxattr(path, XATTR_SESSION), await self.afs.stat(path)
        except NotADirectoryError:
            raise FileNotFoundError(errno.ENOENT, "no such upload session", session_id) from None
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise FileNotFoundError(errno.ENOENT, "no such upload session", session_id) from None
            raise

    async def parts(self, session_id: str) -> dict[int, StoredPart]:
        """The parts stored whole so far, by number."""
        parts = {}
        for entry in await self.afs.scandir(session_path(session_id)):
            if not entry.name.startswith(PART_PREFIX) or not entry.is_file():
                continue
            try:
                number = int(entry.name[len(PART_PREFIX):])
            except ValueError:
                continue
            st = entry.stat()
            parts[number] = StoredPart(number, entry.path, st.st_size, st.st_mtime_ns)
        return parts

    @asynccontextmanager
    async def part_file(self, session_id: str, number: int) -> AsyncIterator[AsyncFile]:
        """Part `number` to write whole (it replaces one stored before only once complete)."""
        async with staged_file(self.afs, part_path(session_id, number)) as afile:
            yield afile

    @asynccontextmanager
    async def assembled(self, session_id: str, parts: list[StoredPart], target: str, exclusive: bool = False
                        ) -> AsyncIterator[Assembly]:
        """Commit `parts` (in this order) as the file `target`: linked by reference as far as
        the chunk boundaries allow, the rest copied once (see the module's docstring). The
        block gets the new file's inode, size and mtime (to set xattrs on, by inode: the caller
        made it, so it owns it); the file appears under `target` whole when the block ends
        without error (a rename; `exclusive`: FileExistsError if the target exists). The parts
        are then empty: the caller removes the session."""
        sizes = [p.size for p in parts]
        linked = links_for(sizes)
        sources = [p.path for p in parts[:linked]]
        if sources and linked < len(parts):
            tail = f"{session_path(session_id)}/{TAIL_NAME}"
            async with staged_file(self.afs, tail) as afile:
                await self._copy(parts[linked:], afile)
            sources.append(tail)
        async with staged_file(self.afs, target, exclusive) as afile:
            if not sources:  # nothing to link: the parts are copied into the file itself
                await self._copy(parts, afile)
            await afile.aclose()
            if sources:
                await self.afs.concat(afile.name, sources)
            attr = await self.afs.client.getattr(afile.open_file.ino)
            yield Assembly(attr.ino, attr.size, attr.mtime_ns, linked, sum(sizes[linked:]))

    async def _copy(self, parts: list[StoredPart], afile: AsyncFile) -> None:
        for part in parts:
            async with await self.afs.open(part.path, "rb") as source:
                while data := await source.read(COPY_PIECE_BYTES):
                    await afile.write(data)

    async def remove(self, session_id: str) -> None:
        """The session and everything in it (FileNotFoundError if it is not there)."""
        path = session_path(session_id)
        for entry in await self.afs.scandir(path):
            await self.afs.remove(entry.path)
        await self.afs.rmdir(path)

    async def listing(self) -> list[tuple[str, bytes, os.stat_result]]:
        """(id, record, stat) of every session this caller can read, multipart and put alike."""
        if not await self.root.exists(SESSIONS_DIR):
            return []
        found = []
        for entry in await self.afs.scandir(SESSIONS_DIR):
            if not entry.is_dir() or is_staged_name(os.fsencode(entry.name)):
                continue
            try:
                record = await self.afs.getxattr(entry.path, XATTR_SESSION)
            except OSError:
                continue
            found.append((entry.name, record, entry.stat()))
        return found


async def count_sessions(root: AsyncFilesystem) -> int:
    """Upload sessions and tus uploads open now (one directory listing)."""
    if not await root.exists(SESSIONS_DIR):
        return 0
    return sum(not is_staged_name(os.fsencode(e.name)) for e in await root.scandir(SESSIONS_DIR))


async def collect_abandoned(root: AsyncFilesystem, expiry_s: float) -> int:
    """Remove the sessions (and tus uploads) untouched for `expiry_s`; how many went. A
    session's directory changes with every part stored, so its mtime is its last use."""
    if not await root.exists(SESSIONS_DIR):
        return 0
    cutoff_ns = time.time_ns() - int(expiry_s * 1e9)
    removed = 0
    for entry in await root.scandir(SESSIONS_DIR):
        if entry.stat().st_mtime_ns > cutoff_ns:
            continue
        try:
            if stat.S_ISDIR(entry.stat().st_mode):
                for part in await root.scandir(entry.path):
                    await root.remove(part.path)
                await root.rmdir(entry.path)
            else:
                await root.remove(entry.path)
            removed += 1
        except FileNotFoundError:  # completed or aborted meanwhile
            continue
    return removed


async def collect_abandoned_forever(root: AsyncFilesystem, expiry_s: float) -> None:
    """Every quarter of `expiry_s` (at most hourly), `collect_abandoned`; runs until cancelled."""
    while True:
        await trio.sleep(min(expiry_s / 4, 3600.0))
        try:
            removed = await collect_abandoned(root, expiry_s)
        except OSError as exc:  # the cluster away for a while: try again next round
            log.warning("collecting abandoned uploads: %s", exc)
            continue
        if removed:
            log.info("removed %d upload(s) abandoned for more than %g s", removed, expiry_s)


def put_session_id(uid: int, target: str, local: os.stat_result) -> str:
    """The session of putting this local file (as it is now: size, mtime, inode) at `target`
    as `uid`: the same on every run until the file changes, so a second run finds the first's."""
    identity = f"{uid}\0{target}\0{local.st_size}\0{local.st_mtime_ns}\0{local.st_ino}\0{local.st_dev}"
    return "put-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


async def resumable_upload(afs: AsyncFilesystem, local_path: Path, remote_path: str, progress: Progress | None,
                           exclusive: bool) -> int:
    """Upload a large local file in parts of PUT_PART_BYTES kept in an upload session, then
    commit them into `remote_path` without a copy (all parts are whole chunks). A run that was
    killed leaves its finished parts in the session; the next run of the same put (same file,
    unchanged, same target) stores only the parts missing. Returns the bytes it found stored
    (counted in `progress` too). As `transfers.upload`: never visible half-written, EBUSY if
    the local file changes while read; a caller that may not make the sessions directory
    (not root, and none there yet) gets PermissionError: upload in one go then."""
    target = afs.canonical(remote_path)
    await afs.parent_of(target, errno.EISDIR)  # no directory to put it in: say so before any part is sent
    local = await trio.to_thread.run_sync(open_for_reading, local_path)
    try:
        before = os.fstat(local.fileno())
        size = before.st_size
        sessions = UploadSessions(afs, afs)
        session_id = put_session_id(afs.identity.uid, target, before)
        try:
            await sessions.record(session_id)
        except FileNotFoundError:
            record = {"put": target, "size": size, "local": str(local_path)}
            await sessions.create(json.dumps(record).encode(), session_id)
        stored = await sessions.parts(session_id)
        found = 0
        count = max(1, -(-size // PUT_PART_BYTES))
        for number in range(1, count + 1):
            start = (number - 1) * PUT_PART_BYTES
            length = min(PUT_PART_BYTES, size - start)
            if number in stored and stored[number].size == length:
                found += length
                if progress is not None:
                    progress(length)
                continue
            await trio.to_thread.run_sync(local.seek, start)
            async with sessions.part_file(session_id, number) as afile:
                copied = await copy_into(local, length, afile, progress)
                if copied != length:
                    raise FsError(errno.EBUSY, f"{local_path} changed while it was read; nothing was stored "
                                               f"under {target} (upload it again)")
        if file_version(before) != file_version(os.fstat(local.fileno())):
            await sessions.remove(session_id)
            raise FsError(errno.EBUSY, f"{local_path} changed while it was read; nothing was stored under {target} "
                                       f"(upload it again)")
        parts = sorted((await sessions.parts(session_id)).values(), key=lambda p: p.number)[:count]
        async with sessions.assembled(session_id, parts, target, exclusive):
            pass
        await sessions.remove(session_id)
        if found:
            log.info("put %s: resumed, %d of %d bytes were stored by an earlier run", target, found, size)
        return found
    finally:
        local.close()
