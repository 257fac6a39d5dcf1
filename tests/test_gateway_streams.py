"""Units of the gateway's body writing (chunkfs/gateway/streams.py): the gathering buffers are
bounded for the whole gateway, and a stalled body cannot keep its turn."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from chunkfs import CHUNK_SIZE
from chunkfs.gateway import streams
from chunkfs.gateway.s3_errors import S3Error

PIECE = 1 << 20


class ChunkSink:
    """Stands in for an AsyncFile: takes writes, says its position."""

    def __init__(self) -> None:
        self.size = 0

    def tell(self) -> int:
        return self.size

    async def write(self, data: bytes | memoryview) -> int:
        await trio.sleep(0.01)  # an upload's hand-over takes a while
        self.size += len(data)
        return len(data)


async def pieces(count: int, gap_s: float = 0.0):
    for _ in range(count):
        await trio.sleep(gap_s)
        yield b"x" * PIECE


def test_no_more_than_gathering_bodies_hold_a_chunk_buffer_at_once(monkeypatch):
    bodies = 3 * streams.GATHERING_BODIES
    gathering: set[int] = set()  # the bodies whose gathering buffer holds bytes now
    most = 0
    add, take = streams._Gathered.add, streams._Gathered.take

    def counted_add(self, piece: bytes) -> None:
        nonlocal most
        add(self, piece)
        gathering.add(id(self))
        most = max(most, len(gathering))

    def counted_take(self, size: int) -> bytes:
        data = take(self, size)
        if not self.size:  # the chunk is handed over: its bytes are the writer's now
            gathering.discard(id(self))
        return data

    monkeypatch.setattr(streams._Gathered, "add", counted_add)
    monkeypatch.setattr(streams._Gathered, "take", counted_take)
    digested = [0] * bodies

    async def upload(n: int, sink: ChunkSink) -> None:
        def seen(data: bytes) -> None:
            digested[n] += len(data)

        assert await streams.write_body(sink, pieces(2 * CHUNK_SIZE // PIECE, 0.001), seen) == 2 * CHUNK_SIZE

    async def main() -> list[ChunkSink]:
        sinks = [ChunkSink() for _ in range(bodies)]
        async with trio.open_nursery() as nursery:
            for n, sink in enumerate(sinks):
                nursery.start_soon(upload, n, sink)
        return sinks

    sinks = trio.run(main)
    assert all(s.size == 2 * CHUNK_SIZE for s in sinks)
    assert digested == [2 * CHUNK_SIZE] * bodies  # every byte digested, by the time write_body returned
    assert most == streams.GATHERING_BODIES  # all turns were used, never more


def test_digests_see_every_byte_in_order():
    """The digests (run in a worker thread a chunk at a time) see the body as it came."""
    async def body():
        for n in (1, 70_000, CHUNK_SIZE, 5, 3 * CHUNK_SIZE + 11, 300_000):
            yield bytes([n % 251]) * n

    expected = hashlib.md5()
    for n in (1, 70_000, CHUNK_SIZE, 5, 3 * CHUNK_SIZE + 11, 300_000):
        expected.update(bytes([n % 251]) * n)
    got = hashlib.md5()
    sink = ChunkSink()
    assert trio.run(streams.write_body, sink, body(), got.update) == sink.size
    assert got.hexdigest() == expected.hexdigest()


def test_a_stalled_body_loses_its_turn_and_the_others_go_on():
    async def stalled():
        yield b"x" * PIECE
        await trio.sleep_forever()
        yield b""

    async def main() -> tuple[BaseException | None, int]:
        failures: list[BaseException] = []
        done = 0

        async def stall_one() -> None:
            try:
                await streams.write_body(ChunkSink(), stalled(), lambda piece: None)
            except S3Error as exc:
                failures.append(exc)

        async def normal_one() -> None:
            nonlocal done
            await streams.write_body(ChunkSink(), pieces(CHUNK_SIZE // PIECE), lambda piece: None)
            done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(streams.GATHERING_BODIES):
                nursery.start_soon(stall_one)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(4):
                nursery.start_soon(normal_one)
        return (failures[0] if failures else None), done

    failure, done = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert isinstance(failure, S3Error) and failure.code == "RequestTimeout" and failure.status == 400
    assert done == 4


@pytest.mark.parametrize("sizes", [[], [0, 5], [CHUNK_SIZE - 1, 2], [3 * CHUNK_SIZE + 7]])
def test_every_byte_is_written_whatever_the_pieces(sizes):
    async def body():
        for n in sizes:
            yield b"y" * n

    sink = ChunkSink()
    assert trio.run(streams.write_body, sink, body(), lambda piece: None) == sum(sizes) == sink.size
