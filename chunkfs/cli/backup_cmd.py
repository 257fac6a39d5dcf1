"""`chunkfs backup DEST`: a consistent copy of the running metaserver's database, taken over its
authenticated API (so from any host holding the cluster secret), zstd-compressed; `chunkfs
restore BACKUP DATA_DIR` puts one in place of a stopped metaserver's database. How and when:
README, "Backup, restore and a standby"."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import click
import zstandard

from chunkfs import auth
from chunkfs.cli.cluster_access import primary_address, access_from, common_options, fail
from chunkfs.cli.output import console, echo_json, human_bytes
from chunkfs.durable_files import replace_durably
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol.replication_client import CopyInfo, download_copy, save_copy


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@common_options
def backup(dest: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Copy the metaserver's database to DEST, zstd-compressed (a file; in a directory, a new
    dated file; - for stdout)."""
    access = access_from(metaserver, secret_file, data_dir)
    try:
        secret = auth.load_secret(access.secret_file)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the cluster secret: {exc}")
    to_stdout = str(dest) == "-"
    if dest.is_dir():
        dest = dest / time.strftime("chunkfs-meta-%Y%m%d-%H%M%S.mdb.zst")
    if not to_stdout and not dest.parent.is_dir():
        fail(f"{dest.parent}: no such directory")
    started = time.monotonic()
    info: CopyInfo
    primary = primary_address(access)
    try:
        if to_stdout:
            info = download_copy(primary, secret, sys.stdout.buffer, decompress=False, tls=access.tls_context())
            sys.stdout.buffer.flush()
        else:
            info = save_copy(primary, secret, dest, decompress=False, tls=access.tls_context())
    except TransportError as exc:
        fail(f"cannot reach the metaserver at {access.metaserver}: {exc}")
    except FsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{dest}: {exc.strerror or exc}")
    elapsed = time.monotonic() - started
    where = "stdout" if to_stdout else str(dest)
    if as_json:
        echo_json({"path": where, "size_bytes": info.size_bytes, "database_bytes": info.database_bytes,
                   "seconds": round(elapsed, 3)}, err=to_stdout)
    else:
        click.echo(f"{where}: {human_bytes(info.size_bytes)} (a database of {human_bytes(info.database_bytes)}) "
                   f"copied from {access.metaserver} in {elapsed:.1f} s", err=to_stdout)


@click.command()
@click.argument("backup_file", metavar="BACKUP", type=click.Path(path_type=Path))
@click.argument("meta_dir", metavar="DATA_DIR", type=click.Path(path_type=Path))
def restore(backup_file: Path, meta_dir: Path) -> None:
    """Put BACKUP (from `chunkfs backup`; - for stdin) in place of the database in DATA_DIR (the
    metaserver's data_dir, e.g. .chunkfs/meta) while the metaserver is stopped."""
    meta_dir.mkdir(parents=True, exist_ok=True)
    lock = meta_dir / "lock.mdb"
    if lock.exists() and in_use(lock):
        fail(f"{meta_dir}: a metaserver is using this database; stop it first")
    partial = meta_dir / "data.mdb.partial"
    try:
        with (sys.stdin.buffer if str(backup_file) == "-" else open(backup_file, "rb")) as source, \
                open(partial, "wb") as out:
            zstandard.ZstdDecompressor().copy_stream(source, out)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, zstandard.ZstdError) as exc:
        partial.unlink(missing_ok=True)
        fail(f"{backup_file}: {exc}")
    lock.unlink(missing_ok=True)
    replace_durably(partial, meta_dir / "data.mdb")
    console.print(f"{meta_dir / 'data.mdb'}: restored from {backup_file} "
                  f"({human_bytes((meta_dir / 'data.mdb').stat().st_size)}); start the metaserver")


def in_use(lock: Path) -> bool:
    """Whether a process has the LMDB environment open (it holds a lock on lock.mdb)."""
    with open(lock, "rb+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(f, fcntl.LOCK_UN)
        return False


