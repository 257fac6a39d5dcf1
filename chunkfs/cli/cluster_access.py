"""How a CLI command finds the cluster to talk to: flags, else the local cluster in `--dir`,
else the mount holding a path, else the defaults."""

from __future__ import annotations

import errno
import json
import os
import ssl
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec
import trio

from chunkfs import DEFAULT_METASERVER_PORT, auth, mounts, tls
from chunkfs.errors import FsError, TransportError
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient

T = TypeVar("T")
DEFAULT_DIR = Path(".chunkfs")


@dataclass
class ClusterAccess:
    metaserver: str
    secret_file: Path
    tls_dir: str = ""  # connect with TLS, as an admin (chunkfs.tls), or as the mount found did

    def tls_context(self, name: str = "admin") -> ssl.SSLContext | None:
        files = tls.tls_files(self.tls_dir, name)
        return files.client_context() if files else None


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"chunkfs: {message}", err=True)
    sys.exit(code)


def local_cluster_file(data_dir: Path) -> Path:
    return data_dir / "run" / "cluster.json"


def access_from(metaserver: str | None, secret_file: Path | None, data_dir: Path,
                path: Path | None = None) -> ClusterAccess:
    if path is not None and metaserver is None:
        record = mounts.find(path)
        if record is None:
            fail(f"{path} is not inside a chunkfs mount")
        return ClusterAccess(record["metaserver"], Path(record["secret_file"]), record.get("tls_dir", ""))
    info = local_cluster_file(data_dir)
    if metaserver is None and info.exists():
        data = json.loads(info.read_text())
        return ClusterAccess(data["metaserver"], Path(secret_file or data["secret_file"]), data.get("tls_dir", ""))
    return ClusterAccess(metaserver or f"127.0.0.1:{DEFAULT_METASERVER_PORT}",
                         Path(secret_file or "/etc/chunkfs/secret"))


def primary_address(access: ClusterAccess) -> str:
    """The metaserver that answers calls (with several, the primary: the one a status call
    ended at); for what is not a MetaClient call (a backup's download)."""
    if "," not in access.metaserver:
        return access.metaserver

    async def answering(meta: MetaClient) -> str:
        await meta.status()
        return meta.servers.current

    return run_with_meta(access, answering)


def run_with_meta(access: ClusterAccess, fn: Callable[[MetaClient], Awaitable[T]], error_code: int = 1) -> T:
    """Run `fn` with a client of the metaserver; any failure ends the command with one line and
    `error_code` (commands whose exit codes mean more pick another)."""
    try:
        secret = auth.load_secret(access.secret_file)
        context = access.tls_context()
    except (OSError, ValueError) as exc:
        fail(f"cannot read the cluster secret: {exc}", error_code)

    async def call() -> T:
        http = SignedHttp(secret, retry_s=3, trio_native=True, tls=context)
        try:
            return await fn(MetaClient(http, access.metaserver))
        finally:
            await http.aclose()

    try:
        return trio.run(call)
    except TransportError as exc:
        fail(f"cannot reach the metaserver at {access.metaserver}: {exc}", error_code)
    except FsError as exc:
        fail(str(exc), error_code)  # with the call's request_id, to find it in the server's log
    except msgspec.ValidationError as exc:  # a value stored before the metaserver checked its input
        fail(f"the metaserver answered a value this client cannot take: {exc}", error_code)
    raise AssertionError("unreachable")


def inode_of(path: Path) -> int:
    """The cluster's inode of `path`; the root of a subdirectory mount is the subdirectory's.
    What the mount answered itself and has not sent yet (write-behind) is sent first, so the
    metaserver, which the command asks next, knows what the mount shows."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")
    record = mounts.find(path)
    if record is not None and not stat.S_ISLNK(st.st_mode):
        sync_mount_changes(path)
    return record.get("root_ino", 1) if record and st.st_ino == 1 else st.st_ino


def sync_mount_changes(path: Path) -> None:
    """An fsync of `path`: a durability point of its mount, which sends every change it
    answered itself. A write-back error it reports is shown, not fatal."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):  # not readable by this user: the mount sends them within its bound
            click.echo(f"chunkfs: {path}: the mount's pending changes: {exc.strerror}", err=True)


def is_dir(path: Path) -> bool:
    return stat.S_ISDIR(os.lstat(path).st_mode)


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    fn = click.option("--secret-file", type=click.Path(path_type=Path), help="Cluster secret file.")(fn)
    fn = click.option("--metaserver", help="HOST:PORT of the metaserver (with failover: of each, comma-separated).")(fn)
    fn = click.option("--dir", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                      show_default=True, help="Local cluster directory (from `chunkfs up`).")(fn)
    return fn
