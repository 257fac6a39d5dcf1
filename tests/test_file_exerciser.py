"""A randomized file exerciser: reads, writes, truncates and shared writable mmaps (with msync)
at random offsets, many of them across 4 MiB chunk boundaries, each checked against an
in-memory model of the file. Now and then the file is fsynced, or closed and opened again
(which commits it and reads it back through the chunkservers). A few thousand operations by
default, tens of thousands with --long. A failure names its seed: CHUNKFS_EXERCISER_SEED=N
replays it."""

from __future__ import annotations

import mmap
import os
import random

import pytest

from chunkfs import CHUNK_SIZE
from long_budget import LongBudget

PAGE = mmap.PAGESIZE
MAX_SIZE = 3 * CHUNK_SIZE + CHUNK_SIZE // 2
LONG_BATCH = 1000  # operations per batch under make test-long's budget (tests/long_budget.py): ~45 s


class Exerciser:
    def __init__(self, path, rng: random.Random) -> None:
        self.path, self.rng = path, rng
        self.model = bytearray()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.log: list[str] = []

    def offset(self) -> int:
        """Mostly near a chunk boundary, else anywhere up to a little past the end."""
        if self.rng.random() < 0.6:
            boundary = CHUNK_SIZE * self.rng.randint(1, MAX_SIZE // CHUNK_SIZE)
            return max(0, boundary + self.rng.randint(-70_000, 70_000))
        return self.rng.randint(0, min(MAX_SIZE, len(self.model) + 100_000))

    def length(self) -> int:
        return self.rng.choice([1, 7, 512, 4096, 65_537, 300_000, self.rng.randint(1, 1_200_000)])

    # ---- operations ---------------------------------------------------------------------
    def write(self) -> None:
        off = self.offset()
        data = self.rng.randbytes(min(self.length(), MAX_SIZE - off)) if off < MAX_SIZE else b""
        self.log.append(f"pwrite({off}, {len(data)})")
        assert os.pwrite(self.fd, data, off) == len(data)
        if off > len(self.model):
            self.model.extend(bytes(off - len(self.model)))
        self.model[off:off + len(data)] = data

    def read(self) -> None:
        off, n = self.offset(), self.length()
        self.log.append(f"pread({off}, {n})")
        got = os.pread(self.fd, n, off)
        assert got == bytes(self.model[off:off + n]), self.failure(f"pread({off}, {n})")

    def truncate(self) -> None:
        size = self.offset() if self.rng.random() < 0.7 else self.rng.randint(0, MAX_SIZE)
        self.log.append(f"ftruncate({size})")
        os.ftruncate(self.fd, size)
        del self.model[size:]
        self.model.extend(bytes(size - len(self.model)))

    def mmap_write(self) -> None:
        """A shared writable mapping of part of the file, written through and msynced."""
        if len(self.model) < PAGE:
            return self.write()
        start = self.rng.randrange(0, len(self.model) - 1) // PAGE * PAGE
        length = min(len(self.model) - start, self.rng.choice([PAGE, 3 * PAGE, 70_000, 2 * CHUNK_SIZE]))
        inner = self.rng.randrange(0, length)
        data = self.rng.randbytes(min(length - inner, self.rng.choice([1, 100, 5000, 200_000])))
        self.log.append(f"mmap({start}, {length})[{inner}:+{len(data)}]")
        with mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start) as m:
            m[inner:inner + len(data)] = data
            m.flush()  # msync(MS_SYNC)
            assert m[:] == bytes(self.model[start:start + inner]) + data + bytes(
                self.model[start + inner + len(data):start + length]), self.failure("mmap read back")
        self.model[start + inner:start + inner + len(data)] = data

    def mmap_read(self) -> None:
        if not self.model:
            return
        start = self.rng.randrange(0, len(self.model)) // PAGE * PAGE
        length = min(len(self.model) - start, self.rng.choice([PAGE, 50_000, CHUNK_SIZE + PAGE]))
        self.log.append(f"mmap-read({start}, {length})")
        with mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=start) as m:
            assert m[:] == bytes(self.model[start:start + length]), self.failure(f"mmap-read({start}, {length})")

    def stat(self) -> None:
        assert os.fstat(self.fd).st_size == len(self.model), self.failure("fstat size")

    def fsync(self) -> None:
        self.log.append("fsync")
        os.fsync(self.fd)

    def reopen(self) -> None:
        self.log.append("close+open")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        self.stat()

    def failure(self, what: str) -> str:
        return f"{what} differs from the model after: {self.log[-15:]}"

    def run(self, operations: int) -> None:
        ops = [(self.write, 30), (self.read, 30), (self.truncate, 5), (self.mmap_write, 10),
               (self.mmap_read, 8), (self.stat, 10), (self.fsync, 1), (self.reopen, 1)]
        choices, weights = zip(*ops, strict=True)
        for _ in range(operations):
            self.rng.choices(choices, weights)[0]()
        self.reopen()
        whole = b"".join(iter(lambda: os.read(self.fd, 1 << 20), b""))
        assert whole == bytes(self.model), self.failure("the whole file")

    def close(self) -> None:
        os.close(self.fd)


def exercise(cluster, request, operations: int, budget: LongBudget) -> None:
    """`operations` random operations, each checked against the model, and the whole file after
    each batch of them (all of them in one batch without a budget). The seed draws the same
    operations either way; a batch ends in a reopen, so replay with the same `--long-budget-s`."""
    seed = int(os.environ.get("CHUNKFS_EXERCISER_SEED", random.SystemRandom().randrange(1 << 32)))
    path = cluster.mnt / f"exercised-{request.node.name}"
    exerciser = Exerciser(path, random.Random(seed))
    try:
        budget.run(operations, LONG_BATCH, exerciser.run, f"seed {seed}: operations")
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}") from None
    finally:
        exerciser.close()
        path.unlink()


def test_file_exerciser(cluster, request, long_budget):
    exercise(cluster, request, 2000, long_budget)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_file_exerciser_long(cluster, request, long_budget):
    exercise(cluster, request, 20_000, long_budget)
