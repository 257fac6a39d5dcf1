"""`chunkfs backup DEST`: a consistent copy of the running metaserver's database, taken over its
authenticated API (so from any host holding the cluster secret). How to restore it: README,
"Backup, restore and a standby"."""

from __future__ import annotations

import time
from pathlib import Path

import click

from chunkfs import auth
from chunkfs.cli.cluster_access import access_from, common_options, fail
from chunkfs.cli.output import console, echo_json, human_bytes
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol.replication_client import download_copy


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@common_options
def backup(dest: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Copy the metaserver's database to DEST (a file; in a directory, a new dated file)."""
    access = access_from(metaserver, secret_file, data_dir)
    try:
        secret = auth.load_secret(access.secret_file)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the cluster secret: {exc}")
    if dest.is_dir():
        dest = dest / time.strftime("chunkfs-meta-%Y%m%d-%H%M%S.mdb")
    if not dest.parent.is_dir():
        fail(f"{dest.parent}: no such directory")
    started = time.monotonic()
    try:
        info = download_copy(access.metaserver, secret, dest)
    except TransportError as exc:
        fail(f"cannot reach the metaserver at {access.metaserver}: {exc}")
    except FsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{dest}: {exc.strerror or exc}")
    elapsed = time.monotonic() - started
    if as_json:
        echo_json({"path": str(info.path), "size_bytes": info.size_bytes, "checksum": info.checksum,
                   "seconds": round(elapsed, 3)})
    else:
        console.print(f"{info.path}: {human_bytes(info.size_bytes)} copied from {access.metaserver} "
                      f"in {elapsed:.1f} s (xxh3-128 {info.checksum})")
