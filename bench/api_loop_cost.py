"""What anyio would cost the Python API's hot path, beside what the path costs today.

    .venv/bin/python bench/api_loop_cost.py [HOST:PORT SECRET_FILE]

1. The primitives a small read or write goes through (a lock taken and released around a
   checkpoint), on trio as the client core uses them, and through anyio on trio and on asyncio.
2. With a cluster: a 4 KiB read of a cached file through the async API (all in memory: no call
   leaves the client), and through the synchronous face (one hand-off to the client's thread).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import trio

N = 100_000  # times are CPU time of this process: the machine may be busy


async def _loop(lock_type: Callable[[], object], checkpoint: Callable[[], Awaitable[None]]) -> float:
    lock = lock_type()
    started = time.process_time()
    for _ in range(N):
        async with lock:  # type: ignore[attr-defined]
            await checkpoint()
    return (time.process_time() - started) / N * 1e6


def primitives() -> dict[str, float]:
    return {
        "trio Lock + checkpoint": trio.run(_loop, trio.Lock, trio.lowlevel.checkpoint),
        "anyio on trio": anyio.run(_loop, anyio.Lock, anyio.lowlevel.checkpoint, backend="trio"),
        "anyio on asyncio": anyio.run(_loop, anyio.Lock, anyio.lowlevel.checkpoint, backend="asyncio"),
        "asyncio Lock + sleep(0)": asyncio.run(_loop(asyncio.Lock, lambda: asyncio.sleep(0))),
    }


def api_reads(address: str, secret_file: str) -> dict[str, float]:
    import chunkfs.client

    path = f"/api-loop-cost-{os.getpid()}"
    with chunkfs.client.connect(address, secret_file=secret_file) as fs:
        with fs.open(path, "wb") as f:
            f.write(os.urandom(1 << 20))
        with fs.open(path, "rb") as f:
            f.read(4096)
            started = time.process_time()
            for i in range(5000):
                f.seek((i * 4096) % (1 << 20))
                f.read(4096)
            sync_us = (time.process_time() - started) / 10000 * 1e6  # two hand-offs a round

        async def async_reads() -> float:
            async with chunkfs.client.open_filesystem(address, secret_file=secret_file) as afs:
                af = await afs.open(path)
                await af.read(4096)
                started = time.process_time()
                for i in range(20000):
                    await af.seek((i * 4096) % (1 << 20))
                    await af.read(4096)
                elapsed_us = (time.process_time() - started) / 20000 * 1e6
                await af.aclose()
                return elapsed_us

        async_us = trio.run(async_reads)
        fs.remove(path)
    return {"4 KiB cached read, async API (trio)": async_us, "one call through the sync face": sync_us}


if __name__ == "__main__":
    results = primitives()
    if len(sys.argv) == 3:
        results.update(api_reads(sys.argv[1], sys.argv[2]))
    for name, micros in results.items():
        print(f"{name:40s} {micros:7.2f} us")
