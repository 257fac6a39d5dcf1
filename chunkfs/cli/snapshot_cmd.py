"""`chunkfs snapshot SRC DST [--read-only]`: a copy of a file or a tree that shares its chunks
(copy-on-write, see chunkfs/metaserver/snapshots.py); `chunkfs snapshot-remove DST` removes a
read-only one (an admin's key: no client key can make it writable again)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import click

from chunkfs.cli.cluster_access import access_from, common_options, fail, inode_of, is_dir, run_with_meta


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--read-only", is_flag=True, help="Every change to the copy is refused (EROFS); "
              "`chunkfs snapshot-remove DST` removes it.")
@common_options
def snapshot(src: Path, dst: Path, read_only: bool, data_dir: Path, metaserver: str | None,
             secret_file: Path | None, as_json: bool) -> None:
    """Copy SRC (a file or a directory tree on a mount) to the new path DST in one step, from
    metadata alone: the copy shares SRC's chunks, and a later write to either side stores new
    chunks for that side only."""
    if os.path.lexists(dst):
        fail(f"{dst} exists")
    access = access_from(metaserver, secret_file, data_dir, src)
    ino, parent = inode_of(src), inode_of(dst.parent)
    started = time.monotonic()
    attr = run_with_meta(access, lambda meta: meta.snapshot(ino, parent, os.fsencode(dst.name), read_only))
    took_s = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"src": str(src), "dst": str(dst), "ino": attr.ino, "read_only": attr.read_only,
                               "seconds": round(took_s, 3)}))
    else:
        click.echo(f"{dst}: {'read-only ' if read_only else ''}snapshot of {src} ({took_s:.2f} s)")


@click.command()
@click.argument("dst", type=click.Path(exists=True, path_type=Path))
@common_options
def snapshot_remove(dst: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None,
                    as_json: bool) -> None:
    """Remove the snapshot DST (read-only or not): made writable again, then removed through the
    mount, so its files go to the trash as any removed file does."""
    access = access_from(metaserver, secret_file, data_dir, dst)
    ino = inode_of(dst)
    run_with_meta(access, lambda meta: meta.set_read_only(ino, False, recursive=True))
    try:
        if is_dir(dst):
            shutil.rmtree(dst)
        else:
            dst.unlink()
    except OSError as exc:
        fail(f"{dst}: {exc.strerror or exc}")
    if as_json:
        click.echo(json.dumps({"removed": str(dst)}))
    else:
        click.echo(f"{dst}: removed")
