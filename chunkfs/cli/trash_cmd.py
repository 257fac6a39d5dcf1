"""`chunkfs trash list|restore|purge` and `chunkfs trash-time`: removed files kept for their
retention time, and that time per directory (see chunkfs/metaserver/trash.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from chunkfs.cli.amounts import DURATION, human_duration
from chunkfs.cli.cluster_access import access_from, common_options, fail, inode_of, run_with_meta
from chunkfs.cli.output import console, echo_json, human_bytes
from chunkfs.protocol import records as r
from chunkfs.protocol.records import MAX_TRASH_S

MAX_LISTED = 10_000_000


@click.command("trash-time")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.argument("retention", type=DURATION, required=False)
@click.option("-r", "--recursive", is_flag=True, help="Set it on everything below PATH too.")
@common_options
def trash_time(path: Path, retention: int | None, recursive: bool, data_dir: Path, metaserver: str | None,
               secret_file: Path | None, as_json: bool) -> None:
    """Show or set how long files removed from PATH stay in the trash (30m, 24h, 7d; 0: not
    kept). What is made in a directory takes its setting."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = inode_of(path)
    if retention is None:
        seconds = run_with_meta(access, lambda meta: _shown(meta, ino))
    else:
        if retention > MAX_TRASH_S:
            fail(f"a retention of at most {MAX_TRASH_S} seconds (100 years)")
        run_with_meta(access, lambda meta: meta.trash_time(ino, retention, recursive))
        seconds = retention
    if as_json:
        click.echo(json.dumps({"path": str(path), "trash_time_s": seconds}))
    else:
        click.echo(f"{path}: removed files stay in the trash for {human_duration(seconds)}"
                   if seconds else f"{path}: removed files are not kept")


async def _shown(meta, ino: int) -> int:
    """The retention in force: the directory's own, else the metaserver's default (as status says)."""
    own = await meta.trash_time_of(ino)
    return own if own >= 0 else (await meta.status()).default_trash_s


@click.group()
def trash() -> None:
    """Removed files kept for a while: list them, restore them, free them now."""


@trash.command("list")
@click.argument("path", type=click.Path(exists=True, path_type=Path), required=False)
@common_options
def list_trash(path: Path | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
               as_json: bool) -> None:
    """The files in the trash (removed from PATH or below it, or from anywhere): their ids, the
    paths they had, their sizes and when they go."""
    access = access_from(metaserver, secret_file, data_dir, path)
    under = inode_of(path) if path is not None else 0

    async def every_page(meta) -> list[r.TrashItem]:
        items: list[r.TrashItem] = []
        while len(items) < MAX_LISTED:
            page = await meta.trash_list(items[-1].id if items else 0, 1000, under)
            items += page
            if len(page) < 1000:
                break
        return items

    items = run_with_meta(access, every_page)
    if as_json:
        echo_json([{"id": i.id, "path": os.fsdecode(i.path), "size": i.size, "deleted_ns": i.deleted_ns,
                    "expires_ns": i.expires_ns} for i in items])
        return
    from rich.table import Table

    now = time.time_ns()
    table = Table("id", "path", "size", "removed", "freed in", title=f"{len(items)} files in the trash")
    for i in items:
        table.add_row(str(i.id), os.fsdecode(i.path), human_bytes(i.size),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.deleted_ns / 1e9)),
                      human_duration(max(0, i.expires_ns - now) / 1e9))
    console.print(table)


@trash.command("restore")
@click.argument("ids", type=click.IntRange(1), nargs=-1, required=True)
@click.option("--to", "to", type=click.Path(path_type=Path),
              help="Where to put it: a new path, or a directory to put it in under its old name.")
@common_options
def restore(ids: tuple[int, ...], to: Path | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
            as_json: bool) -> None:
    """Put files of the trash back where they were (or --to another place). A name that is
    taken is not replaced: the restore fails (use --to)."""
    if to is not None and len(ids) > 1 and not to.is_dir():
        fail("--to names one file's new path, or a directory for several")
    access = access_from(metaserver, secret_file, data_dir, to.parent if to is not None else None)
    parent, name = 0, b""
    if to is not None:
        parent, name = (inode_of(to), b"") if to.is_dir() else (inode_of(to.parent), os.fsencode(to.name))

    async def restore_all(meta) -> list[r.TrashRestored]:
        return [await meta.trash_restore(r.TrashRestoreReq(id=i, parent=parent, name=name)) for i in ids]

    done = run_with_meta(access, restore_all)
    if as_json:
        echo_json([{"id": i, "parent": d.parent, "name": os.fsdecode(d.name), "ino": d.attr.ino}
                   for i, d in zip(ids, done, strict=True)])
    else:
        for i, d in zip(ids, done, strict=True):
            click.echo(f"{i}: restored as {os.fsdecode(d.name)} (in directory inode {d.parent})")


@trash.command("purge")
@click.argument("ids", type=click.IntRange(1), nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Free every file in the trash.")
@common_options
def purge(ids: tuple[int, ...], everything: bool, data_dir: Path, metaserver: str | None,
          secret_file: Path | None, as_json: bool) -> None:
    """Free files of the trash now (their chunks are deleted in the background): those named,
    or --all."""
    if bool(ids) == everything:
        fail("name the ids to free, or --all")
    access = access_from(metaserver, secret_file, data_dir)

    async def purge_all(meta) -> int:
        if ids:
            return await meta.trash_purge(r.TrashPurgeReq(ids=list(ids)))
        freed = 0
        while n := await meta.trash_purge(r.TrashPurgeReq(everything=True)):
            freed += n
        return freed

    freed = run_with_meta(access, purge_all)
    if as_json:
        echo_json({"freed": freed})
    else:
        click.echo(f"freed {freed} files")
