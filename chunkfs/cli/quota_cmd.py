"""`chunkfs quota set|get|list|remove`: directory quotas on logical bytes and inodes (hard limits
refuse growth with EDQUOT, soft ones only warn; see chunkfs/metaserver/quotas.py).

Exit codes: 0 all well, 1 a failure, 2 (`get`, `list`) some quota is past a soft limit, so a
script can warn without parsing the table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from chunkfs import ROOT_INODE
from chunkfs.cli.amounts import BYTES, COUNT
from chunkfs.cli.cluster_access import access_from, common_options, fail, inode_of, is_dir, run_with_meta
from chunkfs.cli.output import console, echo_json, human_bytes
from chunkfs.protocol import records as r

OVER_SOFT = 2


@click.group()
def quota() -> None:
    """Per-directory quotas on bytes and inodes (set, get, list, remove)."""


def _directory(path: Path) -> int:
    if not is_dir(path):
        fail(f"{path} is not a directory: quotas are set on directories")
    return inode_of(path)


@quota.command("set")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--bytes", "bytes_hard", type=BYTES, default=0, help="Hard limit on logical bytes (10G, 512M).")
@click.option("--inodes", "inodes_hard", type=COUNT, default=0, help="Hard limit on files and directories (100k).")
@click.option("--soft-bytes", "bytes_soft", type=BYTES, default=0, help="Soft limit on bytes: a warning only.")
@click.option("--soft-inodes", "inodes_soft", type=COUNT, default=0, help="Soft limit on inodes: a warning only.")
@common_options
def set_quota(path: Path, bytes_hard: int, inodes_hard: int, bytes_soft: int, inodes_soft: int, data_dir: Path,
              metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Limit what may be stored below directory PATH (replaces its limits; 0 is no limit). A
    limit below what is stored already is taken: growth is refused from then on."""
    access = access_from(metaserver, secret_file, data_dir, path)
    req = r.QuotaSetReq(ino=_directory(path), bytes_hard=bytes_hard, bytes_soft=bytes_soft, inodes_hard=inodes_hard,
                        inodes_soft=inodes_soft)
    _show([run_with_meta(access, lambda meta: meta.quota_set(req))], as_json, str(path), warn_exit=False)


@quota.command("get")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@common_options
def get_quota(path: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """The quota of directory PATH: its limits and what is stored below it."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = _directory(path)
    _show([run_with_meta(access, lambda meta: meta.quota_get(ino))], as_json, str(path))


@quota.command("list")
@click.argument("path", type=click.Path(exists=True, path_type=Path), required=False)
@common_options
def list_quotas(path: Path | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
                as_json: bool) -> None:
    """Every directory quota of the cluster, or those on directory PATH and below it (as a
    credential exported for a subtree must ask)."""
    access = access_from(metaserver, secret_file, data_dir, path)
    under = _directory(path) if path is not None else ROOT_INODE
    _show(run_with_meta(access, lambda meta: meta.quota_list(under)), as_json)


@quota.command("remove")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@common_options
def remove_quota(path: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None,
                 as_json: bool) -> None:
    """Drop the quota of directory PATH."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = _directory(path)
    run_with_meta(access, lambda meta: meta.quota_remove(ino))
    if as_json:
        echo_json({"path": str(path), "removed": True})
    else:
        click.echo(f"{path}: quota removed")


def _show(quotas: list[r.QuotaInfo], as_json: bool, shown_as: str | None = None, warn_exit: bool = True) -> None:
    """`shown_as`: the path the user gave (the cluster's path of the directory otherwise);
    `warn_exit`: exit OVER_SOFT when a quota is past a soft limit."""
    if as_json:
        echo_json([{**msgspec.to_builtins(q), "path": shown_as or q.path.decode(errors="replace"),
                    "over_soft": q.over_soft} for q in quotas])
    else:
        from rich.table import Table

        table = Table("directory", "bytes used", "soft", "hard", "inodes used", "soft", "hard", "state")
        for q in quotas:
            state = f"[yellow]over the soft limit on {' and '.join(q.over_soft)}[/]" if q.over_soft else "ok"
            table.add_row(shown_as or q.path.decode(errors="replace"), human_bytes(q.used_bytes),
                          _limit(q.bytes_soft, human_bytes), _limit(q.bytes_hard, human_bytes), str(q.used_inodes),
                          _limit(q.inodes_soft, str), _limit(q.inodes_hard, str), state)
        console.print(table)
    if warn_exit and any(q.over_soft for q in quotas):
        sys.exit(OVER_SOFT)


def _limit(value: int, show: Any) -> str:
    return show(value) if value else "-"
