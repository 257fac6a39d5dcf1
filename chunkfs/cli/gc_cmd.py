"""`chunkfs gc`: a garbage-collection pass now. The metaserver asks every live chunkserver what
it holds and queues for deletion the chunk versions no file references (see
`chunkfs.metaserver.gc`); its deleter then removes them. Nothing referenced is ever removed, and
chunk files younger than `--min-age-s` (uploads not committed yet) are left alone."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec
import trio
from rich.table import Table

from chunkfs.cli.cluster_access import access_from, common_options, fail, run_with_meta
from chunkfs.cli.output import console, echo_json, human_bytes, progress
from chunkfs.protocol import records as r

POLL_S = 0.5


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option("--min-age-s", type=click.FloatRange(0), default=300.0, show_default=True,
              help="Leave chunk files younger than this (uploads whose commit may still come).")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=None,
              help="Wait up to this many seconds until the metaserver's deletion queue is empty.")
@common_options
def gc(dry_run: bool, min_age_s: float, wait_s: float | None, data_dir: Path, metaserver: str | None,
       secret_file: Path | None, as_json: bool) -> None:
    """Find chunk versions no file references on the chunkservers and remove them."""
    access = access_from(metaserver, secret_file, data_dir)

    async def collect(meta) -> tuple[r.GcReport, int | None]:
        with progress() as bar:
            bar.add_task("asking the chunkservers", total=None)
            report = await meta.gc(dry_run, min_age_s)
        if wait_s is None or dry_run:
            return report, None
        return report, await _wait_for_deletions(meta, wait_s)

    report, pending = run_with_meta(access, collect)
    if as_json:
        echo_json({**msgspec.to_builtins(report), "pending_deletions": pending})
    else:
        _print(report)
    if pending:
        fail(f"{pending} chunk versions still queued for deletion after {wait_s:.0f} s", code=3)


async def _wait_for_deletions(meta, wait_s: float) -> int:
    """Chunk versions still queued for deletion (everywhere, not only this pass's) when the
    queue emptied or `wait_s` ran out."""
    deadline = time.monotonic() + wait_s
    first = left = (await meta.status()).pending_deletions
    with progress() as bar:
        task = bar.add_task("waiting for the deletions", total=first)
        while left and time.monotonic() < deadline:
            await trio.sleep(POLL_S)
            left = (await meta.status()).pending_deletions
            bar.update(task, completed=max(0, first - left))
    return left


def _print(report: r.GcReport) -> None:
    table = Table("address", "id", "unreferenced versions", "bytes", "problem")
    for s in report.servers:
        table.add_row(s.address, s.id[:12], str(s.versions), human_bytes(s.bytes), f"[red]{s.error}[/]" if s.error else "")
    console.print(table)
    what = "would be queued for deletion (dry run)" if report.dry_run else "queued for deletion"
    console.print(f"{report.versions} unreferenced chunk versions, {human_bytes(report.bytes)}, {what}", soft_wrap=True)
