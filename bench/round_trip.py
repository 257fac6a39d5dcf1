"""One metadata round trip, timed: what a lookup, a getattr and a durable setattr cost through
the mount's client (MetaClient over the HTTP/1.1-on-trio transport), and what stat, mkdir, chmod and
unlink cost through the FUSE mount.

    .venv/bin/python bench/round_trip.py [--dir .chunkfs] [--count 2000] [--rounds 3]

Starts nothing: run it against `chunkfs up`. Each figure is the median of `--rounds` rounds of
the mean over `--count` calls one at a time (a round trip, not throughput). The files it makes
(under `round-trip-bench/` in the filesystem's root) are removed again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import trio

from chunkfs import auth
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import ROOT_INO, MetaClient


def ms_per_call(fn, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        fn(i)
    return (time.perf_counter() - started) / count * 1000


async def ams_per_call(fn, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        await fn(i)
    return (time.perf_counter() - started) / count * 1000


async def client_figures(address: str, secret: bytes, count: int) -> dict[str, float]:
    http = SignedHttp(secret, trio_native=True)
    meta = MetaClient(http, address, client_id="round-trip-bench")
    try:
        root = await meta.getattr(ROOT_INO)

        async def lookup_missing(i: int) -> None:
            with contextlib.suppress(FsError):
                await meta.lookup(ROOT_INO, b"round-trip-bench-missing")

        async def setattr(i: int) -> None:
            await meta.setattr(r.SetattrReq(ino=ROOT_INO, mode=root.mode))

        await ams_per_call(lookup_missing, 50)  # warm the connection
        return {
            "lookup miss": await ams_per_call(lookup_missing, count),
            "getattr": await ams_per_call(lambda i: meta.getattr(ROOT_INO), count),
            "setattr": await ams_per_call(setattr, count),
        }
    finally:
        await http.aclose()


def mount_figures(mountpoint: Path, count: int) -> dict[str, float]:
    base = mountpoint / "round-trip-bench"
    base.mkdir(exist_ok=True)
    missing = mountpoint / "round-trip-bench-missing"  # in the root: a directory this mount made it may answer itself

    def stat_missing(i: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.stat(missing)

    files = [base / f"f{i}" for i in range(count)]
    dirs = [base / f"d{i}" for i in range(count)]
    figures = {"stat missing": ms_per_call(stat_missing, count),
               "mkdir": ms_per_call(lambda i: os.mkdir(dirs[i]), count),
               "chmod": ms_per_call(lambda i: os.chmod(dirs[i], 0o700 if i % 2 else 0o755), count)}
    for f in files:
        f.touch()
    figures["unlink"] = ms_per_call(lambda i: os.unlink(files[i]), count)
    for d in dirs:
        d.rmdir()
    base.rmdir()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(".chunkfs"))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-mount", action="store_true")
    args = parser.parse_args()
    info = json.loads((args.dir / "run" / "cluster.json").read_text())
    secret = auth.load_secret(Path(info["secret_file"]))
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        figures = trio.run(client_figures, info["metaserver"], secret, args.count)
        if not args.no_mount:
            figures.update(mount_figures(Path(info["mountpoint"]), min(args.count, 1000)))
        rounds.append(figures)
    print(f"load: {os.getloadavg()[0]:.2f}")
    for name in rounds[0]:
        values = [f[name] for f in rounds]
        print(f"{name:14s} median {statistics.median(values):.3f} ms  "
              f"(range {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
