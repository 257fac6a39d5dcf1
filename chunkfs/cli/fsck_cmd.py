"""`chunkfs fsck [PATH]`: the metaserver checks every file's chunks (or those under PATH) against
the chunkservers it knows, one page of the namespace at a time (see `chunkfs.metaserver.fsck`).

Exit code: 0 all is well, 1 some chunks are under or over their goal (or a corrupt copy is still
being replaced) but every chunk can be read, 2 some chunk has no live replica (data cannot be
read now), 3 the check itself failed (metaserver unreachable, bad PATH)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from rich.table import Table

from chunkfs.cli.cluster_access import access_from, common_options, inode_of, run_with_meta
from chunkfs.cli.output import console, echo_json, progress
from chunkfs.protocol import records as r

PAGE_ENTRIES = 1000
MAX_PAGES = 10_000_000
CHECK_FAILED = 3


@dataclass
class FsckResult:
    files_checked: int = 0
    chunks_checked: int = 0
    missing: int = 0
    corrupt: int = 0
    under_goal: int = 0
    over_goal: int = 0
    problems: list[dict] = field(default_factory=list)

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
        return 1 if self.corrupt or self.under_goal or self.over_goal else 0

    def summary(self) -> str:
        return (f"{self.files_checked} files, {self.chunks_checked} chunks checked: "
                f"{len(self.problems)} files with problems; chunks {self.missing} missing, "
                f"{self.corrupt} corrupt, {self.under_goal} under goal, {self.over_goal} over goal")


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--page", "page_entries", type=click.IntRange(1, 10_000), default=PAGE_ENTRIES, show_default=True,
              help="Namespace entries the metaserver checks per request.")
@common_options
def fsck(path: Path | None, page_entries: int, data_dir: Path, metaserver: str | None, secret_file: Path | None,
         as_json: bool) -> None:
    """Check that every file's chunks (under PATH, or all) have their goal of live replicas.

    Exit code 0: all well; 1: chunks under or over goal (or a corrupt copy not yet replaced),
    every chunk readable; 2: chunks with no live replica; 3: the check failed."""
    access = access_from(metaserver, secret_file, data_dir, path)
    root = inode_of(path) if path is not None else 1
    base = str(path) if path is not None else "/"
    result = FsckResult()

    async def walk(meta) -> None:
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

    run_with_meta(access, walk, error_code=CHECK_FAILED)
    if as_json:
        echo_json({"path": base, **asdict(result), "exit_code": result.exit_code})
        sys.exit(result.exit_code)
    if result.problems:
        table = Table("path", "goal", "chunks", "missing", "corrupt", "under goal", "over goal")
        for p in result.problems:
            table.add_row(p["path"], str(p["goal"]), str(p["chunks"]),
                          *(f"[red]{p[k]}[/]" if p[k] else "0" for k in ("missing", "corrupt")),
                          *(f"[yellow]{p[k]}[/]" if p[k] else "0" for k in ("under_goal", "over_goal")))
        console.print(table)
    colour = ("green", "yellow", "red")[result.exit_code]
    console.print(f"[{colour}]{result.summary()}[/]", soft_wrap=True)
    sys.exit(result.exit_code)
