"""Lookups and listings of a directory with very many entries, timed at 1,000 entries and again
at a larger size: entries are keys of one B-tree (parent inode + name), so the per-entry cost
should stay flat. (tests/test_large_directory.py checks the counts: one call a lookup, a
listing in pages of 1,000; the times are measured here, where a loaded machine cannot fail a test.)

    .venv/bin/python bench/large_directory.py [--dir .chunkfs] [--entries 100000]

Starts nothing: run it as root (it drops the kernel's name cache) against `chunkfs up`. Each
size is timed three times, in turns, and the best of the three is printed; the directories it
makes (`large-1000`, `large-N` in the filesystem's root) are removed again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

from chunkfs import auth
from chunkfs.errors import FsError
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient

SAMPLE = 300


def fill(directory: Path, start: int, stop: int) -> None:
    def make(block: range) -> None:
        for i in block:
            os.close(os.open(directory / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))

    blocks = [range(b, min(b + 500, stop)) for b in range(start, stop, 500)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, blocks))


def empty(directory: Path) -> None:
    """Remove every entry of `directory` (files), several unlinks at once as `fill` creates them:
    one at a time, a 100,000-entry directory took most of an hour on a loaded machine."""
    names = os.listdir(directory)

    def remove(block: list[str]) -> None:
        for name in block:
            os.unlink(directory / name)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(remove, [names[b:b + 500] for b in range(0, len(names), 500)]))


def forget_dentries() -> None:
    """Make the kernel ask the filesystem again for names (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def timings(directory, count: int) -> dict[str, float]:
    rng = random.Random(count)
    names = [f"entry-{rng.randrange(count):06d}" for _ in range(SAMPLE)]
    forget_dentries()
    started = time.perf_counter()
    for name in names:
        os.stat(directory / name)
    found = (time.perf_counter() - started) / SAMPLE
    started = time.perf_counter()
    for i in range(SAMPLE):
        assert not os.path.exists(directory / f"missing-{i}")
    missing = (time.perf_counter() - started) / SAMPLE
    forget_dentries()
    started = time.perf_counter()
    with os.scandir(directory) as it:
        listed = sum(1 for _ in it)
    assert listed == count
    listing = (time.perf_counter() - started) / count
    return {"lookup_ms": found * 1e3, "missing_ms": missing * 1e3, "listing_us_per_entry": listing * 1e6}


def server_timings(metaserver: str, secret: bytes, directory: Path, count: int) -> dict[str, float]:
    """The same, asked of the metaserver itself (the mount's own name cache answers many of the
    lookups above without a call)."""
    async def measure() -> dict[str, float]:
        meta = MetaClient(SignedHttp(secret, trio_native=True), metaserver)
        ino = (await meta.resolve(f"/{directory.name}".encode())).ino
        rng = random.Random(count)
        started = time.perf_counter()
        for _ in range(SAMPLE):
            await meta.lookup(ino, f"entry-{rng.randrange(count):06d}".encode())
        found = (time.perf_counter() - started) / SAMPLE
        started = time.perf_counter()
        for i in range(SAMPLE):
            with contextlib.suppress(FsError):
                await meta.lookup(ino, f"missing-{i}".encode())
        missing = (time.perf_counter() - started) / SAMPLE
        started, listed, after = time.perf_counter(), 0, None
        while page := await meta.readdir(ino, after, 1000):
            listed, after = listed + len(page), page[-1].name
        assert listed == count
        return {"server_lookup_ms": found * 1e3, "server_missing_ms": missing * 1e3,
                "server_listing_us_per_entry": (time.perf_counter() - started) / count * 1e6}

    return trio.run(measure)


def best_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(r[key] for r in rounds) for key in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(".chunkfs"))
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    info = json.loads((args.dir / "run" / "cluster.json").read_text())
    secret = auth.load_secret(Path(info["secret_file"]))
    mountpoint = Path(info["mountpoint"])
    small_dir, big_dir = mountpoint / "large-1000", mountpoint / f"large-{args.entries}"
    small_dir.mkdir()
    big_dir.mkdir()
    try:
        fill(small_dir, 0, 1000)
        started = time.perf_counter()
        fill(big_dir, 0, args.entries)
        create_s = time.perf_counter() - started
        small_rounds, big_rounds = [], []
        for _ in range(3):
            small_rounds.append({**timings(small_dir, 1000), **server_timings(info["metaserver"], secret, small_dir, 1000)})
            big_rounds.append({**timings(big_dir, args.entries),
                               **server_timings(info["metaserver"], secret, big_dir, args.entries)})
        small, large = best_of(small_rounds), best_of(big_rounds)
        print(f"load: {os.getloadavg()[0]:.2f}; created {args.entries:,} entries in {create_s:.1f} s "
              f"({args.entries / create_s:.0f}/s)")
        for key in small:
            print(f"{key:30s} 1,000: {small[key]:8.3f}   {args.entries:,}: {large[key]:8.3f}   "
                  f"ratio {large[key] / small[key]:.2f}")
    finally:
        for directory in (small_dir, big_dir):
            for name in os.listdir(directory):
                os.unlink(directory / name)
            directory.rmdir()


if __name__ == "__main__":
    main()
