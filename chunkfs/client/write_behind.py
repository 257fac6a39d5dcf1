"""Metadata write-behind: changes this mount answered itself, sent to the metaserver later, in
order, in batches (one call and one durable transaction on the metaserver for each).

The metadata façade (`metadata.py`) decides what may be answered here (changes in directories
this mount holds the lease on, see `leases.py`) and keeps its caches and leases right; this
module only keeps the queue and sends it.

Promises:
- Changes reach the metaserver in the order they were added, in batches of at most MAX_OPS
  changes and about MAX_BATCH_BYTES; the oldest change waits at most `bound_s` (the mount's
  `write_behind_s`), less when the queue fills up, none when someone asks (`flush`: fsync,
  fsyncdir, a recall, a request that needs them).
- A change is kept here until the metaserver has made it durable. A batch that could not be sent
  (the metaserver down, restarting, failing over) stays at the head of the queue and is sent
  again, under the same request id, until it is: the metaserver's reply log answers the changes
  it had already applied, so none is applied twice, and a metaserver crash loses none of them.
- A change the metaserver refuses is a write-back error: logged, and raised once by the next
  `take_error` of an inode it names (the next fsync or close of the file, fsync of the directory).
- Memory is bounded: past MAX_QUEUED changes (or MAX_QUEUED_BYTES of inline data), `room()`
  waits for a flush.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from chunkfs import request_id
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient, named_inodes

log = logging.getLogger(__name__)

MAX_OPS = 500
MAX_BATCH_BYTES = 4 << 20  # well under the metaserver's 16 MiB request body limit
MAX_QUEUED = 4 * MAX_OPS
MAX_QUEUED_BYTES = 32 << 20
RETRY_PAUSE_S = 1.0
MAX_ERRORS_KEPT = 10_000  # write-back errors not yet reported (each is logged when it happens)
PER_CHANGE_BYTES = 300  # what a change costs in a batch beside its inline bytes (JSON, base64)


@dataclass
class QueuedChange:
    """One change answered here. `applied` is told the metaserver's answer (its reply, or the
    FsError it refused the change with) once the batch is durable."""

    op: str
    req: Any
    reply_type: type | None
    inodes: set[int]
    size_bytes: int
    applied: Callable[[Any, FsError | None], None] | None = None
    at_ns: int = 0  # the wall-clock time the change was answered at (its ctime here), 0: not given
    added_at: float = field(default_factory=trio.current_time)
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: FsError | None = None


class WriteBehind:
    def __init__(self, server: MetaClient, bound_s: float) -> None:
        self.server = server
        self.bound_s = bound_s
        self.queue: list[QueuedChange] = []
        self.in_flight: list[QueuedChange] = []
        self.touched: Counter[int] = Counter()  # inode -> changes queued or in flight naming it
        self.queued_bytes = 0
        self.errors: dict[int, FsError] = {}  # inode -> the first change naming it that failed
        self.batches_sent = 0
        self.changes_sent = 0
        self._call_id: tuple[str, bool] | None = None  # of the batch in flight
        self._send_lock = trio.Lock()
        self._wanted = trio.Event()  # something is queued
        self._hurry = trio.Event()  # the queue is full: send before the bound

    # ---- what is held -------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing queued or in flight: the metaserver has everything this mount answered."""
        return not self.queue and not self.in_flight

    def touches(self, inodes: Iterable[int]) -> bool:
        """A change queued or in flight names one of `inodes`."""
        return any(self.touched[ino] for ino in inodes) if self.touched else False

    # ---- adding ---------------------------------------------------------------------------------
    async def room(self) -> None:
        """Return once there is room for one more change (at once, but past the bounds)."""
        while len(self.queue) >= MAX_QUEUED or self.queued_bytes >= MAX_QUEUED_BYTES:
            await self.flush()

    def add(self, op: str, req: Any, reply_type: type | None, *, at_ns: int, also: Iterable[int] = (),
            applied: Callable[[Any, FsError | None], None] | None = None) -> QueuedChange:
        """Queue `op` (a metaserver mutation, as /v1/fs/{op} takes it), answered here at wall-clock
        time `at_ns` (the times it gave the inodes it changed: the metaserver stamps it so too).
        `also`: inodes it changes that the request does not name (the file an unlink removes):
        requests about them wait for it too."""
        inline = getattr(req, "inline", None)
        change = QueuedChange(op, req, reply_type, named_inodes(req) | set(also),
                              PER_CHANGE_BYTES + (len(inline) * 4 // 3 if inline else 0), applied, at_ns)
        self.queue.append(change)
        self.touched.update(change.inodes)
        self.queued_bytes += change.size_bytes
        self._wanted.set()
        if len(self.queue) >= MAX_OPS or self.queued_bytes >= MAX_BATCH_BYTES:
            self._hurry.set()
        return change

    # ---- sending ---------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Return once every change queued when it was called is durable on the metaserver.
        TransportError if the metaserver cannot be reached within the retry time: the changes
        stay queued (and are sent again by `run`)."""
        if self.idle:
            return
        last = self.queue[-1] if self.queue else self.in_flight[-1]
        async with self._send_lock:
            while not last.done.is_set():
                await self._send_batch()

    async def _send_batch(self) -> None:
        """Send the batch in flight, or the next one (under the send lock)."""
        if not self.in_flight:
            size = 0
            count = 0
            for change in self.queue[:MAX_OPS]:
                if count and size + change.size_bytes > MAX_BATCH_BYTES:
                    break
                size += change.size_bytes
                count += 1
            self.in_flight, self.queue = self.queue[:count], self.queue[count:]
            self.queued_bytes -= size
            self._call_id = (request_id.new(), True)
        assert self._call_id is not None
        batch = self.in_flight
        try:
            outcomes = await self.server.batch([(c.op, c.req, c.at_ns) for c in batch], self._call_id)
        except FsError as exc:  # the whole batch refused: each change with it
            outcomes = [r.BatchOutcome(exc.errno, exc.message)] * len(batch)
        except BaseException:  # unreachable, or cancelled: it is sent again as it is (it may have been applied)
            self._call_id = (self._call_id[0], False)
            raise
        if len(outcomes) != len(batch):
            outcomes = [r.BatchOutcome(errno.EIO, f"the metaserver answered {len(outcomes)} of {len(batch)} changes")] * len(batch)
        self.batches_sent += 1
        self.changes_sent += len(batch)
        self.in_flight = []
        self._call_id = None
        for change, outcome in zip(batch, outcomes, strict=True):
            self.touched.subtract(change.inodes)
            try:
                change.result = self.server.batch_reply(outcome, change.reply_type)
            except FsError as exc:
                change.error = exc
                self._failed(change, exc)
            if change.applied is not None:
                change.applied(change.result, change.error)
            change.done.set()
        self.touched = +self.touched  # drop the zeros

    def _failed(self, change: QueuedChange, exc: FsError) -> None:
        log.warning("a change made here was refused by the metaserver (write-back error): %s %s: %s",
                    change.op, sorted(change.inodes), exc)
        for ino in change.inodes:
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.setdefault(ino, exc)

    def take_error(self, *inodes: int) -> None:
        """Raise (once) the write-back error of a change that named one of `inodes`."""
        for ino in inodes:
            exc = self.errors.pop(ino, None)
            if exc is not None:
                raise FsError(exc.errno, f"an earlier change was refused: {exc.message}")

    async def run(self) -> None:
        """Send what is queued within the bound, for as long as the client runs."""
        while True:
            await self._wanted.wait()
            oldest_at = self.queue[0].added_at if self.queue else trio.current_time()
            with trio.move_on_at(oldest_at + self.bound_s):
                await self._hurry.wait()
            self._wanted = trio.Event()
            self._hurry = trio.Event()
            try:
                await self.flush()
            except TransportError as exc:
                log.warning("write-behind: the metaserver cannot be reached (%s); %d changes kept, sent again",
                            exc, len(self.queue) + len(self.in_flight))
                self._wanted.set()
                await trio.sleep(RETRY_PAUSE_S)
            if not self.idle:
                self._wanted.set()
