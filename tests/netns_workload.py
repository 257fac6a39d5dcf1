"""The workload every fault test in network namespaces runs (tests/netns_cluster.py): a writer on
one client and a reader on the other, checked at the end (every file whose close() returned reads
back from both clients with the checksum the writer had), and `during_fault`, the fault-then-check
shape those tests share.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from chunkfs import CHUNK_SIZE
from conftest import wait_until
from netns_cluster import NetnsCluster

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drop_page_cache() -> None:
    """Without a fork (see netns_cluster.Launcher)."""
    Path("/proc/sys/vm/drop_caches").write_text("3")


class Workload:
    """A writer making files on one client and a reader checking them on the other, each in a
    thread, until `stop()`. `acknowledged` holds each file whose fsync and close returned; past
    `keep_bytes` of them the writer removes the oldest (so long runs fit the disks)."""

    def __init__(self, writer_dir: Path, reader_dir: Path, max_file_bytes: int = 2 * CHUNK_SIZE + 5000,
                 pause_s: float = 0.05, keep_bytes: int = 160 * MiB) -> None:
        self.writer_dir, self.reader_dir = writer_dir, reader_dir
        self.max_file_bytes, self.pause_s, self.keep_bytes = max_file_bytes, pause_s, keep_bytes
        self.acknowledged: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self.errors: list[str] = []
        self.writes = self.reads = 0
        self.write_done_at: list[float] = []  # time.monotonic() of each acknowledged write
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(self._write_one,), daemon=True),
                         threading.Thread(target=self._loop, args=(self._read_one,), daemon=True)]
        self.started = time.monotonic()

    def start(self) -> Workload:
        self.writer_dir.mkdir(exist_ok=True)
        for thread in self._threads:
            thread.start()
        return self

    def _loop(self, step: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                step()
            except OSError as exc:
                self.errors.append(f"{time.monotonic() - self.started:6.1f} s {step.__name__}: {exc}")
            self._stop.wait(self.pause_s)

    def _write_one(self) -> None:
        name = f"f{self.writes:05d}"
        data = os.urandom(random.randint(1, self.max_file_bytes))
        with open(self.writer_dir / name, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        self.acknowledged[name] = sha256(data)
        self._sizes[name] = len(data)
        self.writes += 1
        self.write_done_at.append(time.monotonic())
        while sum(self._sizes.values()) > self.keep_bytes:
            oldest = next(iter(self._sizes))
            del self.acknowledged[oldest], self._sizes[oldest]
            os.unlink(self.writer_dir / oldest)

    def _read_one(self) -> None:
        if not self.acknowledged:
            return
        name = random.choice(list(self.acknowledged))
        try:
            data = (self.reader_dir / name).read_bytes()
        except FileNotFoundError:
            if name not in self.acknowledged:
                return  # the writer removed it meanwhile
            raise
        if sha256(data) != self.acknowledged.get(name, sha256(data)):
            self.errors.append(f"{name}: read {len(data)} bytes that differ from what was written")
        self.reads += 1

    def longest_write_gap_s(self, after: float = 0.0) -> float:
        """The longest time between two acknowledged writes (from `after` on): the pause the
        writing application saw."""
        times = [t for t in self.write_done_at if t >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def first_write_after(self, moment: float) -> float | None:
        return next((t for t in self.write_done_at if t > moment), None)

    def progress(self) -> tuple[int, int]:
        return self.writes, self.reads

    def keeps_working(self, seconds: float) -> None:
        """Wait `seconds`; both the writer and the reader must have finished something since."""
        writes, reads = self.progress()
        time.sleep(seconds)  # a duration: the workload runs this long under the current conditions
        wait_until(lambda: self.writes > writes and self.reads > reads, 60,
                   f"the writer and the reader each finished something after {seconds} s (errors: {self.errors})")

    def stop(self, timeout_s: float = 120) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                self.errors.append(f"{thread.name} still stuck after {timeout_s} s")

    def verify(self) -> None:
        """No error was seen, and every acknowledged file reads back right from both clients."""
        assert not self.errors, "\n".join(self.errors)
        assert self.writes > 0 and self.reads > 0
        drop_page_cache()
        for directory in (self.writer_dir, self.reader_dir):
            for name, digest in self.acknowledged.items():
                assert sha256((directory / name).read_bytes()) == digest, f"{directory / name}"


@contextlib.contextmanager
def workload_in(cluster: NetnsCluster, test_name: str) -> Iterator[Workload]:
    """A writer on client1 and a reader on client2 in a directory of the test's own; its files
    are removed afterwards (so the shared disks do not fill up)."""
    name = test_name.replace("[", "-").replace("]", "")
    load = Workload(cluster.mnt("client1") / name, cluster.mnt("client2") / name).start()
    try:
        yield load
    finally:
        load.stop()
        shutil.rmtree(cluster.mnt("client1") / name, ignore_errors=True)


@contextlib.contextmanager
def during_fault(workload: Workload, fault: Callable[[], None], heal: Callable[[], None],
                 recovered: Callable[[], None] = lambda: None, before_s: float = 2, after_s: float = 2
                 ) -> Iterator[float]:
    """Fault, then check the writer: the workload runs `before_s`, `fault()`, the with-body (the
    test's checks while the fault lasts; it gets the time.monotonic() the fault began), `heal()`
    (also when a check failed), `recovered()` (waits for the cluster to be whole again), the
    workload goes on `after_s` more, and every acknowledged file is checked from both clients,
    with no application call having failed."""
    workload.keeps_working(before_s)
    fault_at = time.monotonic()
    fault()
    try:
        yield fault_at
    finally:
        heal()
    recovered()
    workload.keeps_working(after_s)
    workload.stop()
    workload.verify()
