"""`chunkfs fsck [PATH]`: the metaserver checks every file's chunks (or those under PATH) against
the chunkservers it knows, one page of the namespace at a time (see `chunkfs.metaserver.fsck`);
then, for the whole cluster (no PATH), the disks: every chunkserver's inventory against the
records, a few buckets of chunk ids at a time (see `chunkfs.metaserver.disk_check`), with
`--repair` to queue the copies and deletions that make them agree.

Exit code: 0 all is well, 1 some chunks are under or over their goal, or a replica is missing,
corrupt or unknown, but every chunk can be read, 2 some chunk has no live replica (data cannot
be read now, or is lost), 3 the check itself failed (metaserver unreachable, bad PATH)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import msgspec
from rich.table import Table

from chunkfs.cli.cluster_access import access_from, common_options, inode_of, run_with_meta
from chunkfs.cli.output import console, echo_json, progress
from chunkfs.protocol import disk_check as d
from chunkfs.protocol import records as r

PAGE_ENTRIES = 1000
DISK_PAGE_BUCKETS = 8  # of 256: a page holds what the servers keep in 1/32 of the chunk ids
MAX_DETAILS = 1000
MAX_PAGES = 10_000_000
CHECK_FAILED = 3


@dataclass
class DiskResult:
    """The disk check's pages summed up: counts of replicas, the servers, the files short of
    good replicas (merged by inode: a file's chunks are in many pages)."""

    checked: bool = False
    chunks_checked: int = 0
    missing: int = 0
    corrupt: int = 0
    unknown: int = 0
    unreachable: int = 0
    repaired: int = 0
    servers: dict[str, dict] = field(default_factory=dict)
    replicas: list[dict] = field(default_factory=list)
    files: dict[int, dict] = field(default_factory=dict)

    def add(self, page: d.DiskCheckPage) -> None:
        self.checked = True
        self.chunks_checked += page.chunks_checked
        for k in ("missing", "corrupt", "unknown", "unreachable", "repaired"):
            setattr(self, k, getattr(self, k) + getattr(page, k))
        for s in page.servers:
            known = self.servers.setdefault(s.id, {"id": s.id, "address": s.address, "state": s.state, "held": 0})
            known["held"] += s.held
            if s.state != "up":
                known["state"] = s.state
        if len(self.replicas) < MAX_DETAILS:
            self.replicas.extend(msgspec.to_builtins(page.replicas[:MAX_DETAILS - len(self.replicas)]))
        for f in page.files:
            known = self.files.setdefault(f.ino, {"ino": f.ino, "path": "/" + os.fsdecode(f.path) if f.path else "",
                                                  "goal": f.goal, "chunks_under_goal": 0, "chunks_lost": 0,
                                                  "chunks_unavailable": 0})
            for k in ("chunks_under_goal", "chunks_lost", "chunks_unavailable"):
                known[k] += getattr(f, k)

    @property
    def lost_files(self) -> list[str]:
        return sorted(f["path"] or f"<inode {ino}>" for ino, f in self.files.items() if f["chunks_lost"])

    @property
    def exit_code(self) -> int:
        if any(f["chunks_lost"] or f["chunks_unavailable"] for f in self.files.values()):
            return 2
        down = any(s["state"] != "up" for s in self.servers.values())
        return 1 if self.missing or self.corrupt or self.unknown or self.files or down else 0

    def summary(self) -> str:
        down = [s["address"] for s in self.servers.values() if s["state"] != "up"]
        return (f"disks: {self.chunks_checked} chunks on {len(self.servers) - len(down)} chunkservers up"
                + (f" ({len(down)} down or not answering: {', '.join(down)})" if down else "")
                + f": replicas {self.missing} missing, {self.corrupt} corrupt, {self.unknown} unknown, "
                f"{self.unreachable} on servers down; {len(self.files)} files short of good replicas, "
                f"{len(self.lost_files)} lost"
                + (f"; {self.repaired} repairs queued" if self.repaired else ""))


@dataclass
class FsckResult:
    files_checked: int = 0
    chunks_checked: int = 0
    missing: int = 0
    corrupt: int = 0
    under_goal: int = 0
    over_goal: int = 0
    files_s: float = 0.0  # how long the walk of the files took
    problems: list[dict] = field(default_factory=list)
    disks: DiskResult = field(default_factory=DiskResult)
    quotas_checked: bool = False
    quotas_wrong: list[dict] = field(default_factory=list)  # usage recorded != recounted (quotas.py)
    sharing_wrong: list[str] = field(default_factory=list)  # shared chunk versions' bookkeeping (snapshots)

    @property
    def files_per_s(self) -> float:
        return self.files_checked / self.files_s if self.files_s else 0.0

    def add(self, page: r.FsckPage, base: str) -> None:
        self.files_checked += page.files_checked
        self.chunks_checked += page.chunks_checked
        for p in page.problems:
            self.missing += p.missing
            self.corrupt += p.corrupt
            self.under_goal += p.under_goal
            self.over_goal += p.over_goal
            path = os.path.join(base, os.fsdecode(p.path)) if p.path else base
            self.problems.append({"path": path, "ino": p.ino, "goal": p.goal, "chunks": p.chunks,
                                  "missing": p.missing, "corrupt": p.corrupt, "under_goal": p.under_goal,
                                  "over_goal": p.over_goal})

    @property
    def exit_code(self) -> int:
        if self.missing:
            return 2
        return 1 if self.corrupt or self.under_goal or self.over_goal or self.quotas_wrong or self.sharing_wrong else 0

    def add_quotas(self, wrong: list[r.QuotaCheck]) -> None:
        self.quotas_checked = True
        self.quotas_wrong = [{**msgspec.to_builtins(q), "path": os.fsdecode(q.path)} for q in wrong]

    def add_disks(self, page: d.DiskCheckPage) -> None:
        self.disks.add(page)

    @property
    def worst(self) -> int:
        return max(self.exit_code, self.disks.exit_code)

    def summary(self) -> str:
        return (f"{self.files_checked} files, {self.chunks_checked} chunks checked: "
                f"{len(self.problems)} files with problems; chunks {self.missing} missing, "
                f"{self.corrupt} corrupt, {self.under_goal} under goal, {self.over_goal} over goal "
                f"({self.files_s:.1f} s, {self.files_per_s:,.0f} files/s)")


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--page", "page_entries", type=click.IntRange(1, 10_000), default=PAGE_ENTRIES, show_default=True,
              help="Namespace entries the metaserver checks per request.")
@click.option("--repair", is_flag=True,
              help="Queue copies of missing and corrupt replicas and the deletion of unknown ones.")
@click.option("--verify", is_flag=True,
              help="Have every chunkserver re-read all it holds now (slow) instead of trusting its scrubber.")
@click.option("--min-age-s", type=click.FloatRange(0), default=300.0, show_default=True,
              help="A chunk file younger than this is not called unknown (its upload may be about to commit).")
@common_options
def fsck(path: Path | None, page_entries: int, repair: bool, verify: bool, min_age_s: float, data_dir: Path,
         metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Check that every file's chunks (under PATH, or all) have their goal of live replicas, and
    (without PATH) that the chunkservers' disks hold what the records say.

    Exit code 0: all well; 1: chunks under or over goal, replicas missing, corrupt or unknown,
    a chunkserver down, but every chunk readable; 2: chunks with no live replica (lost files are
    listed by path); 3: the check failed."""
    access = access_from(metaserver, secret_file, data_dir, path)
    root = inode_of(path) if path is not None else 1
    base = str(path) if path is not None else "/"
    result = FsckResult()
    disk_req = d.DiskCheckReq(buckets=1 if verify else DISK_PAGE_BUCKETS, verify=verify, repair=repair,
                              min_age_s=min_age_s)

    async def walk(meta) -> None:
        started = time.monotonic()
        with progress() as bar:
            total = (await meta.status()).files if root == 1 and not bar.disable else None
            task = bar.add_task("checking files", total=total)
            cursor: list[r.FsckFrame] = []
            for _ in range(MAX_PAGES):
                page = await meta.fsck(root, cursor, page_entries)
                result.add(page, base)
                bar.update(task, advance=page.files_checked)
                cursor = page.cursor
                if not cursor:
                    break
            result.files_s = time.monotonic() - started
            if path is not None:
                return
            result.add_quotas(await meta.quota_check())
            result.sharing_wrong = await meta.sharing_check()
            task = bar.add_task("checking the disks", total=d.BUCKETS)
            while disk_req.first_bucket < d.BUCKETS:
                disk_page = await meta.check_disks(disk_req)
                result.add_disks(disk_page)
                bar.update(task, completed=disk_page.next_bucket)
                disk_req.first_bucket = disk_page.next_bucket

    run_with_meta(access, walk, error_code=CHECK_FAILED)
    if as_json:
        echo_json({"path": base, **asdict(result), "files_per_s": round(result.files_per_s),
                   "lost_files": result.disks.lost_files, "exit_code": result.worst})
        sys.exit(result.worst)
    _print(result)
    sys.exit(result.worst)


def _print(result: FsckResult) -> None:
    colours = ("green", "yellow", "red")
    if result.problems:
        table = Table("path", "goal", "chunks", "missing", "corrupt", "under goal", "over goal", title="records")
        for p in result.problems:
            table.add_row(p["path"], str(p["goal"]), str(p["chunks"]),
                          *(f"[red]{p[k]}[/]" if p[k] else "0" for k in ("missing", "corrupt")),
                          *(f"[yellow]{p[k]}[/]" if p[k] else "0" for k in ("under_goal", "over_goal")))
        console.print(table)
    console.print(f"[{colours[result.exit_code]}]{result.summary()}[/]", soft_wrap=True)
    for q in result.quotas_wrong:
        console.print(f"[yellow]quota of {q['path']}: records {q['recorded_bytes']} bytes, {q['recorded_inodes']} "
                      f"inodes; its tree holds {q['counted_bytes']} bytes, {q['counted_inodes']} inodes[/]",
                      soft_wrap=True)
    for problem in result.sharing_wrong:
        console.print(f"[yellow]shared chunks: {problem}[/]", soft_wrap=True)
    if result.quotas_checked:
        console.print(f"quotas: {len(result.quotas_wrong)} with usage other than their trees hold; "
                      f"shared chunk versions: {len(result.sharing_wrong)} problems", soft_wrap=True)
    disks = result.disks
    if not disks.checked:
        return
    if disks.replicas:
        addresses = {s["id"]: s["address"] for s in disks.servers.values()}
        table = Table("replica", "server", "state", "file", title="disks: replicas")
        for rep in disks.replicas:
            f = disks.files.get(rep["ino"], {})
            table.add_row(f"chunk {rep['chunk_id']} v{rep['version']}", addresses.get(rep["server_id"], rep["server_id"]),
                          rep["state"], f.get("path") or (f"inode {rep['ino']}" if rep["ino"] else ""))
        console.print(table)
    if disks.files:
        table = Table("path", "goal", "chunks under goal", "chunks lost", "chunks unavailable", title="disks: files")
        for f in sorted(disks.files.values(), key=lambda f: f["path"]):
            table.add_row(f["path"] or f"<inode {f['ino']}>", str(f["goal"]), str(f["chunks_under_goal"]),
                          *(f"[red]{f[k]}[/]" if f[k] else "0" for k in ("chunks_lost", "chunks_unavailable")))
        console.print(table)
    for lost in disks.lost_files:
        console.print(f"[red]lost: {lost}[/]", soft_wrap=True)
    console.print(f"[{colours[disks.exit_code]}]{disks.summary()}[/]", soft_wrap=True)
