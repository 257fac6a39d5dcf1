"""`chunkfs snapshot SRC DST`: a copy of a file or a tree that shares its chunks (copy-on-write,
see chunkfs/metaserver/snapshots.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from chunkfs.cli.cluster_access import access_from, common_options, fail, inode_of, run_with_meta


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@common_options
def snapshot(src: Path, dst: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None,
             as_json: bool) -> None:
    """Copy SRC (a file or a directory tree on a mount) to the new path DST in one step, from
    metadata alone: the copy shares SRC's chunks, and a later write to either side stores new
    chunks for that side only."""
    if os.path.lexists(dst):
        fail(f"{dst} exists")
    access = access_from(metaserver, secret_file, data_dir, src)
    ino, parent = inode_of(src), inode_of(dst.parent)
    started = time.monotonic()
    attr = run_with_meta(access, lambda meta: meta.snapshot(ino, parent, os.fsencode(dst.name)))
    took_s = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"src": str(src), "dst": str(dst), "ino": attr.ino, "seconds": round(took_s, 3)}))
    else:
        click.echo(f"{dst}: snapshot of {src} ({took_s:.2f} s)")
