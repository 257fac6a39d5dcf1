"""Metadata at scale: N empty files created through the metaserver's API, and what each decade costs.

    .venv/bin/python bench/scale.py --files 1000000 [--callers 8] [--per-dir 1000] [--dir /tmp/scale]

Starts a lone metaserver of its own (no chunkservers: the files are empty, so every figure is the
namespace's) on a free port, and talks to it with the mount's own client (MetaClient over the
HTTP/1.1-on-trio transport), `--callers` calls at a time. Files go 1,000 (`--per-dir`) to a directory.
At each decade (1k, 10k, 100k, ...) it reports the create rate since the previous one,
getattr/lookup p50/p99 (2,000 random files, `--callers` at a time), the time to list a directory of
`--per-dir` entries, the metaserver's resident memory (anonymous: its own; file: mapped LMDB pages,
from /proc/PID/status and smaps_rollup), LMDB bytes per file (pages in use / files), and how long
/v1/status and /metrics take to answer. At the end: getattr p99 of getattrs issued while /metrics is scraped (every 20 ms)
and not, `chunkfs fsck`, `chunkfs backup`, `chunkfs status`, the status page, and the time a restart
takes until a getattr is answered again. Prints a markdown table; `--json FILE` writes the rows.
The machine's load average is printed with each row: figures from a shared machine are noisy.

The acceptance figures are compared against a second metaserver on a copy of the database as it
was at `--reference` files (100,000): at the end the two are measured in turn, `--windows` times each
(`--window-creates` API creates and 2,000 getattrs a window), so load that drifts during a long
run hits both alike; the table gives the median and the worst window of each. getattr p99 with
and without `/metrics` being scraped is measured the same way, in alternating windows. Last,
`--restart-pause` restarts the metaserver while a mount copies files into it (see
bench/restart_pause.py).

`--api-per-decade K` makes large runs affordable on a slow machine: before each decade (past
`--api-until` files, which all go through the API) only its last K files are created through
the API (the create rate is theirs, measured at that size); the others are written straight
into the metaserver's LMDB by this process, through the metaserver's own `Namespace.create` (the
same rows and counts; LMDB lets two processes write in turn).
"""

from __future__ import annotations

import argparse
import array
import bisect
import json
import os
import random
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from chunkfs import auth
from chunkfs.daemons import module_command
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import ROOT_INO, MetaClient
from restart_pause import measure as restart_pause

SAMPLES = 2000


class Metaserver:
    """A lone `chunkfs-metaserver` in `root`, started and stopped by the bench."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "meta"
        self.secret_file = root / "secret"
        if not self.secret_file.exists():
            self.secret_file.write_text(os.urandom(32).hex())
            self.secret_file.chmod(0o600)
        self.secret = auth.load_secret(self.secret_file)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Seconds until /health answers."""
        started = time.monotonic()
        with open(self.root / "metaserver.log", "ab") as log:
            self.proc = subprocess.Popen(module_command("chunkfs.metaserver.main", "--listen", self.address,
                                                        "--data-dir", str(self.data_dir),
                                                        "--secret-file", str(self.secret_file)),
                                         stdout=log, stderr=log)
        while True:
            try:
                if httpx.get(f"http://{self.address}/health", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"the metaserver exited: see {self.root / 'metaserver.log'}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def memory(self) -> dict[str, int]:
        """Resident bytes: anon and file (status), and smaps_rollup's Rss and Anonymous."""
        assert self.proc is not None
        out: dict[str, int] = {}
        for name, keys in (("status", ("RssAnon", "RssFile")), ("smaps_rollup", ("Rss", "Anonymous"))):
            for line in Path(f"/proc/{self.proc.pid}/{name}").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0]) * 1024
        return out

    def metrics_ms(self, path: str = "/metrics") -> float:
        """Median of 5 answers to GET `path` (public: /metrics, the status page), on one connection."""
        took = []
        with httpx.Client(timeout=120) as client:
            for _ in range(5):
                started = time.perf_counter()
                client.get(f"http://{self.address}{path}").raise_for_status()
                took.append(time.perf_counter() - started)
        return statistics.median(took) * 1000

    def metric(self, name: str) -> float:
        for line in httpx.get(f"http://{self.address}/metrics", timeout=120).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def cli_seconds(self, *args: str) -> float:
        return self.cli(*args)[0]

    def cli(self, *args: str) -> tuple[float, str]:
        """(seconds, stdout) of `chunkfs ARGS` against this metaserver."""
        started = time.perf_counter()
        done = subprocess.run(module_command("chunkfs.cli", *args, "--metaserver", self.address,
                                             "--secret-file", str(self.secret_file)),
                              check=False, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=3600)
        return time.perf_counter() - started, done.stdout.decode(errors="replace")


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


class Bench:
    def __init__(self, server: Metaserver, callers: int, per_dir: int) -> None:
        self.server, self.callers, self.per_dir = server, callers, per_dir
        self.http = SignedHttp(server.secret, trio_native=True, retry_s=30)
        self.meta = MetaClient(self.http, server.address, client_id="scale-bench")
        self.inodes = array.array("Q")  # file i's inode
        self.dirs = array.array("Q")  # directory k's inode

    async def make_dirs(self, count: int) -> None:
        while len(self.dirs) < count:
            k = len(self.dirs)
            attr = await self.meta.create(r.CreateReq(parent=ROOT_INO, name=b"d%d" % k, mode=stat.S_IFDIR | 0o755,
                                                      uid=0, gid=0))
            self.dirs.append(attr.ino)

    def fill_directly(self, end: int) -> None:
        """Files up to `end` written straight into LMDB (blocking), as the metaserver's create does."""
        from chunkfs.metaserver.db import MetaDB
        from chunkfs.metaserver.namespace import Namespace

        db = MetaDB(self.server.data_dir)
        namespace = Namespace(db, 3)
        try:
            while len(self.inodes) < end:
                with db.env.begin(write=True) as txn:
                    for i in range(len(self.inodes), min(end, len(self.inodes) + 10_000)):
                        attr = namespace.create(txn, r.CreateReq(parent=self.dirs[i // self.per_dir], name=b"f%d" % i,
                                                                 mode=stat.S_IFREG | 0o644, uid=0, gid=0))
                        self.inodes.append(attr.ino)
        finally:
            db.close()

    async def create(self, end: int, through_api: int = 0) -> float:
        """Files up to `end` (all through the API, or only the last `through_api`); the rate
        of those made through the API (files a second)."""
        await self.make_dirs((end + self.per_dir - 1) // self.per_dir)
        if through_api:
            await trio.to_thread.run_sync(self.fill_directly, max(len(self.inodes), end - through_api))
        start = len(self.inodes)
        self.inodes.extend([0] * (end - start))
        todo = iter(range(start, end))

        async def caller() -> None:
            for i in todo:
                attr = await self.meta.create(r.CreateReq(parent=self.dirs[i // self.per_dir], name=b"f%d" % i,
                                                          mode=stat.S_IFREG | 0o644, uid=0, gid=0))
                self.inodes[i] = attr.ino

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(self.callers):
                nursery.start_soon(caller)
        return (end - start) / (time.perf_counter() - started)

    async def latencies(self, call) -> tuple[float, float]:
        """(p50, p99) ms of `call(i)` for SAMPLES random files, `callers` at a time."""
        return quantiles([took for _started, took in await self.timed_calls(call)])

    async def timed_calls(self, call) -> list[tuple[float, float]]:
        """(time.monotonic() at the call, seconds it took) of `call(i)` for SAMPLES random files,
        `callers` at a time."""
        picks = iter([random.randrange(len(self.inodes)) for _ in range(SAMPLES)])
        calls: list[tuple[float, float]] = []

        async def caller() -> None:
            for i in picks:
                started = time.monotonic()
                await call(i)
                calls.append((started, time.monotonic() - started))

        async with trio.open_nursery() as nursery:
            for _ in range(self.callers):
                nursery.start_soon(caller)
        return calls

    async def getattr(self, i: int) -> None:
        await self.meta.getattr(self.inodes[i])

    async def lookup(self, i: int) -> None:
        await self.meta.lookup(self.dirs[i // self.per_dir], b"f%d" % i)

    async def status_ms(self) -> float:
        """Median of 5 answers to /v1/status, through the same client as the getattrs."""
        took = []
        for _ in range(5):
            started = time.perf_counter()
            await self.meta.status()
            took.append(time.perf_counter() - started)
        return statistics.median(took) * 1000

    async def readdir_ms(self) -> float:
        """A whole directory of `per_dir` files listed, as a mount does (pages until one is empty)."""
        took = []
        for _ in range(5):
            d = self.dirs[random.randrange(len(self.inodes) // self.per_dir)]
            started = time.perf_counter()
            after = None
            while page := await self.meta.readdir(d, after, 1000):
                after = page[-1].name
            took.append(time.perf_counter() - started)
        return statistics.median(took) * 1000


def load() -> float:
    return os.getloadavg()[0]


async def decade_row(bench: Bench, files: int, rate: float) -> dict:
    server = bench.server
    getattr_p50, getattr_p99 = await bench.latencies(bench.getattr)
    lookup_p50, lookup_p99 = await bench.latencies(bench.lookup)
    memory = server.memory()
    used = server.metric("chunkfs_metaserver_memory_lmdb_used_bytes")
    return {
        "files": files, "create_per_s": round(rate), "getattr_p50_ms": round(getattr_p50, 2),
        "getattr_p99_ms": round(getattr_p99, 2), "lookup_p50_ms": round(lookup_p50, 2),
        "lookup_p99_ms": round(lookup_p99, 2), "readdir_ms": round(await bench.readdir_ms(), 1),
        "rss_anon_mib": round(memory["RssAnon"] / 2**20, 1), "rss_file_mib": round(memory["RssFile"] / 2**20, 1),
        "smaps_anonymous_mib": round(memory["Anonymous"] / 2**20, 1),
        "lmdb_bytes_per_file": round(used / files), "status_ms": round(await bench.status_ms(), 1),
        "metrics_ms": round(server.metrics_ms(), 1), "status_page_ms": round(server.metrics_ms("/"), 1),
        "load": round(load(), 1),
    }


SCRAPER = """
import signal, sys, time, httpx
pause_s = float(sys.argv[2])
scrapes = []
signal.signal(signal.SIGTERM, lambda *_: (print(*(f"{a} {b}" for a, b in scrapes), sep="\\n", flush=True), sys.exit(0)))
with httpx.Client(timeout=120) as client:
    while True:
        started = time.monotonic()
        client.get(sys.argv[1])
        scrapes.append((started, time.monotonic()))
        if len(scrapes) == 1:
            print("scraping", flush=True)
        time.sleep(pause_s)
"""
SCRAPE_PAUSE_S = 0.02  # between one scrape's answer and the next: 20-30 scrapes a second


async def getattr_under_scrapes(bench: Bench, path: str) -> tuple[float, float, int, int, float]:
    """getattr (p50, p99) of the getattrs issued while a GET of `path` was under way (another
    process GETs it every SCRAPE_PAUSE_S after the last answer; a thread of this one would hold
    the GIL the getattrs' own event loop needs, and a scraper in a tight loop would also be two
    processes' worth of CPU load on the machine, not the scrape's cost); the GETs made and
    the getattrs counted (issued during one), and the median ms a GET took. CLOCK_MONOTONIC is
    one clock for both processes."""
    scraper = await trio.lowlevel.open_process([sys.executable, "-c", SCRAPER, f"http://{bench.server.address}{path}",
                                                str(SCRAPE_PAUSE_S)], stdout=subprocess.PIPE)
    assert scraper.stdout is not None
    said = b""
    try:
        while b"scraping" not in said:
            said += await scraper.stdout.receive_some()
        calls = await bench.timed_calls(bench.getattr)
    finally:
        scraper.terminate()
        while piece := await scraper.stdout.receive_some():
            said += piece
        await scraper.wait()
    scrapes = sorted(tuple(map(float, line.split())) for line in said.decode().splitlines()[1:] if line.strip())
    starts = [a for a, _b in scrapes]

    def during_a_scrape(t: float) -> bool:
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t <= scrapes[i][1]
    during = [took for started, took in calls if during_a_scrape(started)]
    p50, p99 = quantiles(during)
    return p50, p99, len(scrapes), len(during), statistics.median(b - a for a, b in scrapes) * 1000


async def window(bench: Bench, creates: int) -> dict:
    """One measuring window: `creates` files through the API, then getattr p50/p99."""
    rate = await bench.create(len(bench.inodes) + creates)
    p50, p99 = await bench.latencies(bench.getattr)
    return {"create_per_s": rate, "getattr_p50_ms": p50, "getattr_p99_ms": p99, "load": load()}


async def compare(reference: Bench, bench: Bench, windows: int, creates: int, warmup: int) -> dict:
    """The two metaservers measured in alternating windows (which goes first alternates too).
    The first `warmup` windows of each are kept apart: a metaserver just started maps the pages
    of its database as getattrs first touch them (from disk if the page cache lost them), a
    one-off cost after a start that grows with the database, not a per-call one."""
    taken: dict[str, list[dict]] = {"reference": [], "full": [], "warmup_reference": [], "warmup_full": []}
    for w in range(warmup + windows):
        order = [("reference", reference), ("full", bench)]
        for name, b in order if w % 2 == 0 else order[::-1]:
            taken[name if w >= warmup else f"warmup_{name}"].append(await window(b, creates))
    return taken


async def scrape_windows(bench: Bench, windows: int) -> dict:
    """getattr (p50, p99) in alternating windows: without scrapes ("quiet"); of the getattrs
    issued during a /metrics scrape ("scraped"); of those issued during a GET /health made at
    the same pace ("polled"): what any other client process polling the metaserver costs the
    getattrs on this 2-core machine (its CPU, the loop answering it), whatever it asks."""
    taken: dict[str, list] = {"quiet": [], "scraped": [], "scrapes": [], "during": [], "scrape_ms": [], "polled": []}
    for _ in range(windows):
        taken["quiet"].append(await bench.latencies(bench.getattr))
        p50, p99, scrapes, during, scrape_ms = await getattr_under_scrapes(bench, "/metrics")
        taken["scraped"].append((p50, p99))
        taken["scrapes"].append(scrapes)
        taken["during"].append(during)
        taken["scrape_ms"].append(scrape_ms)
        p50, p99, _polls, _during, _poll_ms = await getattr_under_scrapes(bench, "/health")
        taken["polled"].append((p50, p99))
    return taken


def spread(values: list[float], worst=max) -> str:
    """'median (worst)' of a measure's windows."""
    return f"{statistics.median(values):.1f} ({worst(values):.1f})"


async def restart_seconds(bench: Bench) -> float:
    """SIGTERM to the first getattr answered by the new process."""
    started = time.perf_counter()
    bench.server.stop()
    bench.server.start()
    while True:
        try:
            await bench.meta.getattr(bench.inodes[0])
            return time.perf_counter() - started
        except FsError:
            await trio.sleep(0.01)


def reference_copy(bench: Bench, root: Path) -> Bench:
    """A second metaserver on a copy of `bench`'s database as it is now (LMDB copies a live
    database consistently), with the same files to pick from."""
    from chunkfs.metaserver.db import MetaDB

    (root / "meta").mkdir(parents=True)
    db = MetaDB(bench.server.data_dir)
    try:
        db.env.copy(str(root / "meta"), compact=True)
    finally:
        db.close()
    shutil.copy(bench.server.secret_file, root / "secret")
    server = Metaserver(root)
    server.start()
    reference = Bench(server, bench.callers, bench.per_dir)
    reference.inodes, reference.dirs = array.array("Q", bench.inodes), array.array("Q", bench.dirs)
    return reference


def files_of(server: Metaserver, per_dir: int) -> tuple[array.array, array.array]:
    """(every inode, the directories d0, d1, ... in order) of a database made by an earlier run,
    read straight from LMDB (`--resume`); getattrs then pick among all inodes."""
    from chunkfs.metaserver.db import MetaDB, read_u64, u64

    db = MetaDB(server.data_dir)
    try:
        with db.read() as txn:
            inodes = array.array("Q", (read_u64(k) for k in txn.cursor(db=db.inodes).iternext(values=False)))
            named = {}
            cursor = txn.cursor(db=db.dentries)
            cursor.set_range(u64(ROOT_INO))
            for key, value in cursor:
                if read_u64(key[:8]) != ROOT_INO:
                    break
                if key[8:9] == b"d" and key[9:].isdigit():
                    named[int(key[9:])] = read_u64(value)
    finally:
        db.close()
    return inodes, array.array("Q", (named[k] for k in range(len(named))))


async def build(args: argparse.Namespace, root: Path, bench: Bench, rows: list[dict]) -> Bench:
    """Files up to `--files`, a row at each decade; the reference copy taken at `--reference`."""
    reference = None
    marks = sorted({n for n in (10**k for k in range(3, 12)) if n < args.files} | {args.files, args.reference})
    for mark in marks:
        rate = await bench.create(mark, args.api_per_decade if mark > args.api_until else 0)
        rows.append(await decade_row(bench, mark, rate))
        print(json.dumps(rows[-1]), flush=True)
        if mark == args.reference:
            reference = reference_copy(bench, root / "reference")
    assert reference is not None
    return reference


def resumed(args: argparse.Namespace, root: Path, bench: Bench, rows: list[dict]) -> Bench:
    """The metaservers of an earlier run's `--dir` (kept with `--keep`) and its rows (from the
    log it printed, `--resume LOG`)."""
    rows += [json.loads(line) for line in Path(args.resume).read_text().splitlines() if line.startswith('{"files"')]
    bench.inodes, bench.dirs = files_of(bench.server, args.per_dir)
    reference = Bench(Metaserver(root / "reference"), args.callers, args.per_dir)
    reference.inodes, reference.dirs = files_of(reference.server, args.per_dir)
    reference.server.start()
    return reference


def note(end: dict, **figures) -> None:
    """Figures into `end`, printed at once (a long run's later steps may not be reached)."""
    end.update(figures)
    print(json.dumps({**figures, "load": round(load(), 1)}), flush=True)


async def run(args: argparse.Namespace, root: Path) -> tuple[list[dict], dict]:
    server = Metaserver(root)
    server.start()
    bench = Bench(server, args.callers, args.per_dir)
    reference: Bench | None = None
    rows: list[dict] = []
    end: dict = {"reference_files": args.reference}
    try:
        reference = resumed(args, root, bench, rows) if args.resume else await build(args, root, bench, rows)
        note(end, compared=await compare(reference, bench, args.windows, args.window_creates, args.warmup_windows))
        note(end, scrape_windows=await scrape_windows(bench, args.windows))
        if args.windows_only:
            return rows, end
        cli_status: dict[str, list[float]] = {"reference": [], "full": []}
        for _ in range(3):
            cli_status["reference"].append(reference.server.cli_seconds("status", "--json"))
            cli_status["full"].append(server.cli_seconds("status", "--json"))
        note(end, status_ms=round(await bench.status_ms(), 1), metrics_ms=round(server.metrics_ms(), 1),
             status_page_ms=round(server.metrics_ms("/"), 1),
             chunkfs_status_s=round(statistics.median(cli_status["full"]), 2),
             chunkfs_status_s_reference=round(statistics.median(cli_status["reference"]), 2))
        note(end, restart_s=round(await restart_seconds(bench), 2))
        await reference.http.aclose()
        reference.server.stop()
        reference = None
        if args.restart_pause:
            server.stop()
            note(end, restart_pause=restart_pause(root, random.randrange(20000, 29000)))
            server.start()
        backup = root / "backup.mdb.zst"
        note(end, chunkfs_backup_s=round(server.cli_seconds("backup", str(backup)), 1),
             backup_mib=round(backup.stat().st_size / 2**20, 1) if backup.exists() else None,
             database_mib=round((server.data_dir / "data.mdb").stat().st_blocks * 512 / 2**20, 1))
        fsck_s, fsck_out = server.cli("fsck", "--json")
        note(end, chunkfs_fsck_s=round(fsck_s, 1),
             chunkfs_fsck_files_per_s=json.loads(fsck_out).get("files_per_s") if fsck_out.strip() else None)
        end["load"] = round(load(), 1)
    finally:
        await bench.http.aclose()
        server.stop()
        if reference is not None:
            await reference.http.aclose()
            reference.server.stop()
    return rows, end


COLUMNS = {"files": "files", "create_per_s": "creates/s", "getattr_p50_ms": "getattr p50 ms",
           "getattr_p99_ms": "getattr p99 ms", "lookup_p50_ms": "lookup p50 ms", "lookup_p99_ms": "lookup p99 ms",
           "readdir_ms": "readdir ms", "rss_anon_mib": "RSS anon MiB", "rss_file_mib": "RSS file MiB",
           "smaps_anonymous_mib": "smaps anon MiB", "lmdb_bytes_per_file": "LMDB B/file",
           "status_ms": "/v1/status ms", "metrics_ms": "/metrics ms", "status_page_ms": "status page ms",
           "load": "load"}


def criteria(rows: list[dict], end: dict) -> list[tuple[str, str, str, str]]:
    """The issue's acceptance points: (what, the baseline, at the full size, holds?)."""
    ref, full = end["compared"]["reference"], end["compared"]["full"]
    out = []

    def ratio(name: str, key: str, higher_is_better: bool) -> None:
        a = statistics.median(w[key] for w in ref)
        b = statistics.median(w[key] for w in full)
        worst = min if higher_is_better else max
        ok = b >= 0.8 * a if higher_is_better else b <= 1.2 * a
        out.append((f"{name}, median (worst) of {len(ref)} windows", spread([w[key] for w in ref], worst),
                    spread([w[key] for w in full], worst), f"{'holds' if ok else 'fails'}: {b / a:.2f}×"))

    ratio("creates/s", "create_per_s", True)
    ratio("getattr p99 ms", "getattr_p99_ms", False)
    warm_ref, warm_full = end["compared"].get("warmup_reference"), end["compared"].get("warmup_full")
    if warm_ref and warm_full:
        out.append(("first window after the start (kept apart): creates/s, getattr p99 ms",
                    ", ".join(f"{w['create_per_s']:.0f}, {w['getattr_p99_ms']:.1f}" for w in warm_ref),
                    ", ".join(f"{w['create_per_s']:.0f}, {w['getattr_p99_ms']:.1f}" for w in warm_full), ""))
    by_files = {row["files"]: row for row in rows}
    last = rows[-1]
    base = by_files.get(last["files"] // 10)
    if base is not None:
        a, b = base["rss_anon_mib"], last["rss_anon_mib"]
        out.append((f"RSS anon MiB ({base['files']:,} → {last['files']:,})", f"{a}", f"{b}",
                    f"{'holds' if b <= 1.2 * a and b < 300 else 'fails'}: {b / a:.2f}×, < 300"))
    for key, name in (("status_ms", "/v1/status (chunkfs status' request) ms"), ("metrics_ms", "/metrics ms"),
                      ("status_page_ms", "status page ms")):
        if key in end:
            out.append((name, "", f"{end[key]}", "holds" if end[key] < 50 else "fails"))
    if "chunkfs_status_s" in end:
        a, b = end["chunkfs_status_s_reference"], end["chunkfs_status_s"]
        out.append(("`chunkfs status --json` s, the whole command (median of 3 each)", f"{a}", f"{b}",
                    f"{b / a:.2f}× (Python's start-up; its request is /v1/status)"))
    scraped = end.get("scrape_windows")
    if not scraped:
        return out
    quiet_p99 = [p99 for _p50, p99 in scraped["quiet"]]
    busy_p99 = [p99 for _p50, p99 in scraped["scraped"]]
    a, b = statistics.median(quiet_p99), statistics.median(busy_p99)
    out.append((f"getattr p99 ms without / during /metrics scrapes ({sum(scraped['scrapes'])} scrapes, "
                f"{sum(scraped.get('during', [0]))} getattrs issued during one; a scrape took "
                f"{spread(scraped.get('scrape_ms', [0.0]))} ms)",
                spread(quiet_p99), spread(busy_p99), f"{'holds' if b <= 1.2 * a else 'fails'}: {b / a:.2f}×"))
    if scraped.get("polled"):
        polled_p99 = [p99 for _p50, p99 in scraped["polled"]]
        c = statistics.median(polled_p99)
        out.append(("getattr p99 ms during GET /health polls at the same pace / during /metrics scrapes",
                    spread(polled_p99), spread(busy_p99), f"{'holds' if b <= 1.2 * c else 'fails'}: {b / c:.2f}×"))
    pause = end.get("restart_pause")
    if pause:
        ok = pause["copier_longest_gap_s"] <= pause["restart_s"] + 2 and not pause["copier_errors"]
        out.append(("restart under a copier: restart s / longest gap s / errors",
                    f"{pause['restart_s']}", f"{pause['copier_longest_gap_s']} / {pause['copier_errors']} errors "
                    f"({pause['copier_files']} files)", "holds" if ok else "fails"))
    return out


def print_table(rows: list[dict], end: dict) -> None:
    columns = [c for c in COLUMNS if c in rows[0]]
    print("| " + " | ".join(COLUMNS[c] for c in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" if c == "files" else str(row[c]) for c in columns) + " |")
    print()
    loads = [w["load"] for ws in end["compared"].values() for w in ws]
    print(f"Acceptance ({end['reference_files']:,} files against {rows[-1]['files']:,}; "
          f"load {min(loads):.1f} to {max(loads):.1f} during the windows, {end.get('load')} at the end):")
    print()
    print("| criterion | baseline | at full size | verdict |")
    print("|---|---|---|---|")
    for row in criteria(rows, end):
        print("| " + " | ".join(row) + " |")
    print()
    for key, value in end.items():
        if key not in ("compared", "scrape_windows"):
            print(f"- {key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--dir", help="where the metaserver keeps its database (default: a new temporary one)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--api-per-decade", type=int, default=0,
                        help="create only the last K files of each decade through the API (0: all)")
    parser.add_argument("--api-until", type=int, default=0,
                        help="files up to this many all go through the API (fills the change feed to its bound)")
    parser.add_argument("--reference", type=int, default=100_000,
                        help="files on the reference metaserver (a copy of the database at that size) the "
                             "full one is compared with")
    parser.add_argument("--windows", type=int, default=5, help="measuring windows of each kind")
    parser.add_argument("--window-creates", type=int, default=2000, help="API creates in a window")
    parser.add_argument("--warmup-windows", type=int, default=1,
                        help="windows of each metaserver measured first and kept apart (see compare)")
    parser.add_argument("--windows-only", action="store_true",
                        help="stop after the alternating windows (with --resume: measure them again)")
    parser.add_argument("--resume", metavar="LOG",
                        help="measure the end of an earlier run again: its --dir (kept with --keep) and the "
                             "log it printed (for its rows); nothing is created but the windows' files")
    parser.add_argument("--restart-pause", action="store_true",
                        help="at the end, restart the metaserver while a mount copies files (needs FUSE)")
    args = parser.parse_args()
    if args.files < 1000 or args.reference < 1000:
        parser.error("--files, --reference: at least 1000")
    root = Path(args.dir or tempfile.mkdtemp(prefix="chunkfs-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        rows, end = trio.run(run, args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows, end)
    if args.json:
        Path(args.json).write_text(json.dumps({"decades": rows, "end": end}, indent=1))
    sys.exit(0)


if __name__ == "__main__":
    main()
