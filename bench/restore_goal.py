"""How long a cluster takes to get every chunk back to its goal after losing a chunkserver that
held N GiB: a netns cluster (tests/netns_cluster.py: metaserver, five chunkservers, goal 3, one
client), N GiB written to the server that ends up holding most, that server SIGKILLed, then the
time until the metaserver marks it down and until no chunk is under goal.

Run as root: bench/restore_goal.sh [--gib N] [--heartbeat-timeout-s S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns_cluster import NetnsCluster

MiB = 1024 * 1024
FILE_BYTES = 64 * MiB


def write_until_one_holds(cluster: NetnsCluster, gib: float) -> tuple[str, dict[str, str]]:
    """Write 64 MiB files until some chunkserver holds `gib` GiB; returns it and the files' digests."""
    target = gib * 1024 * MiB
    digests: dict[str, str] = {}
    block = os.urandom(FILE_BYTES)
    started = time.monotonic()
    while True:
        held = {name: sum(p.stat().st_size for p in cluster.chunk_files(name)) for name in cluster.chunkservers}
        fullest = max(held, key=held.get)
        if held[fullest] >= target:
            print(f"wrote {len(digests) * FILE_BYTES / 1024 / MiB:.2f} GiB in {time.monotonic() - started:.0f} s; "
                  + ", ".join(f"{n} {b / 1024 / MiB:.2f} GiB" for n, b in held.items()), flush=True)
            return fullest, digests
        name = f"f{len(digests):05d}"
        data = name.encode().ljust(4096, b"\0") + block[4096:]  # every file different, cheaply
        with open(cluster.mnt("client1") / name, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        digests[name] = hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB on the server that is lost")
    parser.add_argument("--heartbeat-timeout-s", type=float, default=10.0,
                        help="the metaserver's heartbeat_timeout_s (10 is its default)")
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster's data goes [a temp dir]")
    parser.add_argument("--verify", action="store_true", help="read every file back afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("restore_goal: needs root (network namespaces)")
    root = args.dir or Path(tempfile.mkdtemp(prefix="chunkfs-restore-goal-", dir="/var/tmp"))
    cluster = NetnsCluster(root, chunkservers=5, clients=1, goal=3, heartbeat_timeout_s=args.heartbeat_timeout_s)
    try:
        cluster.up()
        victim, digests = write_until_one_holds(cluster, args.gib)
        lost_chunks = len(cluster.chunk_files(victim))
        victim_id = cluster.server_id(victim)
        killed = time.monotonic()
        cluster.kill(victim)
        while next(s for s in cluster.status().servers if s.id == victim_id).alive:
            time.sleep(0.1)
        noticed = time.monotonic()
        while cluster.status().chunks_under_goal > 0 or time.monotonic() - noticed < 1:
            if time.monotonic() - killed > 3600:
                sys.exit("restore_goal: still under goal after an hour")
            time.sleep(0.2)
        restored = time.monotonic()
        status = cluster.status()
        print(f"lost {victim} holding {lost_chunks} chunks ({lost_chunks * 4 / 1024:.2f} GiB)")
        print(f"marked down after     {noticed - killed:6.1f} s  (heartbeat_timeout_s {args.heartbeat_timeout_s:g})")
        print(f"back at goal after    {restored - killed:6.1f} s  ({restored - noticed:.1f} s of copying, "
              f"{lost_chunks * 4 / (restored - noticed):.0f} MiB/s, {status.chunks_replicated} copies made)")
        if args.verify:
            Path("/proc/sys/vm/drop_caches").write_text("3")
            for name, digest in digests.items():
                data = (cluster.mnt("client1") / name).read_bytes()
                assert hashlib.sha256(data).hexdigest() == digest, name
            print(f"all {len(digests)} files read back intact")
    finally:
        cluster.cleanup()
        print(f"cluster down; its data is in {root}")


if __name__ == "__main__":
    main()
