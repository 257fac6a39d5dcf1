"""Chunk transfer through each HTTP client chunkfs could use, against one chunkserver of a
running cluster, plus the cost of checksums per GB. Decides the transport by numbers.

    .venv/bin/python bench/transport.py [--dir .chunkfs] [--chunks 32]

Starts nothing: run it against `chunkfs up` (or bench/run_local.sh). Every figure is MB/s of
4 MiB chunks PUT (fsynced on the server) and GET (verified on the server), one at a time and 4
in flight, through: the lean HTTP/1.1-on-trio transport the mount and CLI use, and httpx (the
asyncio daemons' client) running on trio. The chunk versions it writes are deleted again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import trio
import xxhash

from chunkfs import CHUNK_SIZE, auth
from chunkfs.checksum import block_checksums, chunk_checksum, verify_blocks
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp

FIRST_CHUNK_ID = 1 << 60  # far from any chunk id a cluster hands out


async def transfer(http: SignedHttp, address: str, chunks: int, in_flight: int, data: bytes) -> tuple[float, float]:
    client = ChunkClient(http)
    checksum = chunk_checksum(data)
    limit = trio.CapacityLimiter(in_flight)

    async def each(fn) -> float:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(chunks):
                async def one(i=i):
                    async with limit:
                        await fn(i)
                nursery.start_soon(one)
        return chunks * CHUNK_SIZE / (time.perf_counter() - started) / 1e6

    put = await each(lambda i: client.put(address, FIRST_CHUNK_ID + i, 1, data, checksum))

    async def get(i: int) -> None:
        assert len(await client.get(address, FIRST_CHUNK_ID + i, 1)) == len(data)

    got = await each(get)
    await each(lambda i: client.delete(address, FIRST_CHUNK_ID + i, 1))
    return put, got


def checksum_costs() -> dict[str, float]:
    """Seconds per GB of each checksum the data path computes."""
    data = os.urandom(CHUNK_SIZE)
    sums = block_checksums(data)
    rounds = 64

    def per_gb(fn) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - started) / (rounds * CHUNK_SIZE / 1e9)

    return {
        "xxh3 of a whole chunk (mount, end to end)": per_gb(lambda: chunk_checksum(data)),
        "xxh3 per 64 KiB block (chunkserver write)": per_gb(lambda: block_checksums(data)),
        "verify per 64 KiB block (chunkserver read)": per_gb(lambda: verify_blocks(data, sums, 0)),
        "xxh64 of a whole chunk (for comparison)": per_gb(lambda: xxhash.xxh64_hexdigest(data)),
    }


async def main_async(cluster_dir: Path, chunks: int) -> None:
    info = json.loads((cluster_dir / "run" / "cluster.json").read_text())
    secret = auth.load_secret(Path(info["secret_file"]))
    host, port = info["metaserver"].rsplit(":", 1)
    address = f"{host}:{int(port) + 1}"  # chunkserver 1 of `chunkfs up`
    data = os.urandom(CHUNK_SIZE)
    print(f"{chunks} chunks of 4 MiB to {address}; MB/s (one at a time / 4 in flight)")
    print(f"{'transport':<28}{'PUT':>16}{'GET':>16}")
    for name, trio_native in (("HTTP/1.1 on trio (mount, CLI)", True), ("httpx on trio", False)):
        http = SignedHttp(secret, retry_s=5, trio_native=trio_native)
        try:
            put1, get1 = await transfer(http, address, chunks, 1, data)
            put4, get4 = await transfer(http, address, chunks, 4, data)
        finally:
            await http.aclose()
        print(f"{name:<28}{put1:>8.0f} / {put4:<6.0f}{get1:>8.0f} / {get4:<6.0f}")
    print()
    for what, seconds in checksum_costs().items():
        print(f"{what:<48}{seconds:6.3f} s/GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".chunkfs"), help="cluster dir of `chunkfs up`")
    parser.add_argument("--chunks", type=int, default=32)
    args = parser.parse_args()
    trio.run(main_async, args.dir, args.chunks)


if __name__ == "__main__":
    main()
