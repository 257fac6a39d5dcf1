"""CPU per small-file create of the mount and of the metaserver, from /proc, in alternated pairs.

    .venv/bin/python bench/create_cpu.py --cluster .chunkfs:mnt [--cluster OTHER/.chunkfs:OTHER/mnt]
        [--files 3000] [--rounds 4] [--tree]

Starts nothing: each `--cluster DIR:MOUNTPOINT` is a running `chunkfs up --dir DIR --mount
MOUNTPOINT` (its daemons' pids are read from DIR/run/). Each round creates `--files` files of
4 KiB on every cluster in turn (O_CREAT|O_EXCL, one write, close), the order rotated each round,
and reads the utime+stime of the cluster's mount and metaserver from /proc/PID/stat before and
after: microseconds of CPU per create, which a busy machine disturbs far less than wall time.
With `--tree`, a `cp -a` of a local tree of `--files` files (over 50 directories) is measured
the same way. With two clusters (say one run from a checkout before a change, one after), each
round's second/first ratio is printed as well. Files made are removed after each round.

Figures, 7 Dec 2026, a shared 2-core machine, two fresh clusters of 2 chunkservers, goal 2,
trash off, 1,000 files a round; us of CPU per file, median (min) of the rounds, and the median
of the pairs' ratios after/before. Load 2-3 (8 rounds, at ed4e547):

    before (main 1c4dfe7)  create  mount 1145 (980)   metaserver 960 (800)
                           cp -a   mount 1405 (1310)  metaserver 1115 (930)
    after                  create  mount  760 (620)   metaserver 715 (620)
                           cp -a   mount 1115 (800)   metaserver 1035 (680)
    after/before           create  mount 0.65 (pairs 0.58-0.79)  metaserver 0.75 (0.64-0.88)
                           cp -a   mount 0.75 (0.60-0.92)        metaserver 0.85 (0.64-1.03)

At load 4-6 (6 rounds) the same pairs gave create 0.78 / 0.83 and cp -a 0.75 / 0.81, at load
5-10 create 0.64 / 0.71 and cp -a 0.87 / 0.93, each pair spread 0.4-1.3: CPU per operation
rises 2-3x on a busy machine, so only alternated pairs on a quiet one mean much.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

FILE_BYTES = 4096
TREE_DIRS = 50
DAEMONS = ("mount", "metaserver")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Side:
    def __init__(self, spec: str) -> None:
        data_dir, _, mountpoint = spec.partition(":")
        self.name = spec
        self.mountpoint = Path(mountpoint)
        self.pids = {d: int((Path(data_dir) / "run" / f"{d}.pid").read_text().split()[0]) for d in DAEMONS}

    def cpu(self) -> dict[str, float]:
        return {d: cpu_s(pid) for d, pid in self.pids.items()}


def create_files(folder: Path, count: int) -> None:
    data = os.urandom(FILE_BYTES)
    folder.mkdir()
    for i in range(count):
        fd = os.open(folder / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def make_tree(root: Path, count: int) -> None:
    data = os.urandom(FILE_BYTES)
    for i in range(count):
        folder = root / f"d{i % TREE_DIRS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}").write_bytes(data)


def measure(side: Side, count: int, action, folder: Path) -> dict[str, float]:
    """us of CPU per file of each daemon, and the wall seconds, for `action(folder)`."""
    subprocess.run(["sync"], check=True)
    before, started = side.cpu(), time.perf_counter()
    action(folder)
    wall_s, after = time.perf_counter() - started, side.cpu()
    return {**{d: (after[d] - before[d]) / count * 1e6 for d in DAEMONS}, "wall_s": wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", action="append", required=True, help="DIR:MOUNTPOINT of a running cluster")
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tree", action="store_true", help="measure cp -a of a tree as well")
    args = parser.parse_args()
    sides = [Side(spec) for spec in args.cluster]
    tree_source = Path(tempfile.mkdtemp(prefix="create-cpu-tree-"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        if args.tree:
            make_tree(tree_source, args.files)
        workloads = {"create": lambda folder: create_files(folder, args.files)}
        if args.tree:
            workloads["cp -a"] = lambda folder: subprocess.run(["cp", "-a", str(tree_source), str(folder)], check=True)
        for round_no in range(args.rounds):
            order = sides[round_no % len(sides):] + sides[:round_no % len(sides)]
            for side in order:
                for workload, action in workloads.items():
                    folder = side.mountpoint / f"create-cpu-{os.getpid()}"
                    figures = measure(side, args.files, action, folder)
                    results.setdefault((side.name, workload), []).append(figures)
                    print(f"round {round_no + 1} {workload:7} {side.name}: mount {figures['mount']:.0f} us, "
                          f"metaserver {figures['metaserver']:.0f} us per file, {figures['wall_s']:.2f} s "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
                    shutil.rmtree(folder)
    finally:
        shutil.rmtree(tree_source, ignore_errors=True)
    for (name, workload), rows in results.items():
        print(f"median (min) {workload:7} {name}: " + ", ".join(
            f"{d} {statistics.median(r[d] for r in rows):.0f} ({min(r[d] for r in rows):.0f}) us" for d in DAEMONS)
            + f", {statistics.median(r['wall_s'] for r in rows):.2f} s")
    if len(sides) == 2:
        for workload in workloads:
            first, second = results[(sides[0].name, workload)], results[(sides[1].name, workload)]
            for d in DAEMONS:
                pairs = [b[d] / a[d] for a, b in zip(first, second, strict=True)]
                print(f"ratio second/first {workload:7} {d}: median {statistics.median(pairs):.2f} "
                      f"(pairs {' '.join(f'{p:.2f}' for p in pairs)})")
    print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    main()
