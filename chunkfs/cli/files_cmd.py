"""File commands for scripts, straight to the cluster through `chunkfs.client` (no mount
needed): `put`, `get`, `cat`, `ls`, `rm`, `size`, `mkdir`, `mv`.

Cluster paths are absolute (a relative one is taken from the root). Every command finds the
cluster as the admin commands do (`--metaserver`, `--secret-file`, else the local cluster of
`chunkfs up` in `--dir`), prints JSON with `--json`, and reports failures through the one edge
in `client_edge` (exit 1: an operation failed, 2: usage, 3: cluster unusable, 130: Ctrl-C).
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import posixpath
import pwd
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from chunkfs.cli import transfer
from chunkfs.cli.client_edge import EXIT_CLUSTER, EXIT_FAILED, EXIT_INTERRUPTED, Failures, run_command
from chunkfs.cli.cluster_access import ClusterAccess, access_from, common_options
from chunkfs.cli.output import echo_json, human_bytes

if TYPE_CHECKING:
    from chunkfs.client import AsyncFilesystem

READ_BYTES = 1 << 20
JOBS = click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
                    help="Files copied at once.")
RECURSIVE = click.option("-r", "--recursive", is_flag=True, help="Copy directories and all below them.")


def cluster_path(path: str) -> str:
    """An absolute cluster path; a trailing `/` is kept (it says: a directory)."""
    return path if path.startswith("/") else "/" + path


@dataclass(frozen=True)
class Where:
    """The cluster a command works on and how it answers (the options every file command takes)."""

    access: ClusterAccess
    retry_s: float
    as_json: bool

    def run(self, command: str, job: Callable[[AsyncFilesystem, Failures], Awaitable[Any]]) -> Any:
        return run_command(command, self.access, job, self.retry_s)


def cluster_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--dir, --metaserver, --secret-file, --json (as the admin commands) and --retry-s, given
    to the command as one `where`."""

    @common_options
    @click.option("--retry-s", type=click.FloatRange(0.5), default=15.0, show_default=True,
                  help="How long a call is retried while the cluster does not answer (then exit 3).")
    @functools.wraps(fn)
    def with_where(*args: Any, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool,
                   retry_s: float, **kwargs: Any) -> Any:
        return fn(*args, where=Where(access_from(metaserver, secret_file, data_dir), retry_s, as_json), **kwargs)
    return with_where


def _copies_json(done: list[transfer.Copy], failures: Failures) -> dict[str, Any]:
    return {"copied": [{"source": c.source, "target": c.target, "bytes": c.size_bytes} for c in done],
            "failed": failures.messages}


def _split_sources(paths: tuple[str, ...]) -> tuple[list[str], str]:
    if len(paths) < 2:
        raise click.UsageError("give at least one source and the target")
    return list(paths[:-1]), paths[-1]


@click.command()
@click.argument("paths", nargs=-1, metavar="LOCAL... REMOTE")
@RECURSIVE
@JOBS
@click.option("--url", help="Put through the gateway's REST API at URL (http://HOST:9581) instead of the "
                            "cluster itself: needs only an access key (--key), no cluster secret.")
@click.option("--key", envvar="CHUNKFS_GATEWAY_KEY", help="The access key for --url, as ID:SECRET "
                                                         "(`chunkfs gateway key add`) [env CHUNKFS_GATEWAY_KEY].")
@cluster_options
def put(paths: tuple[str, ...], recursive: bool, jobs: int, url: str | None, key: str | None, where: Where) -> None:
    """Copy local files onto the cluster. REMOTE ending in / (made if missing) or naming a
    directory receives the files under their names. A file appears under its name only once it
    is whole; an interrupted put leaves nothing there. A put of a large file (128 MiB or
    more) that was killed or cut off, run again, resumes: it stores only what the first run had
    not (through --url too)."""
    sources, target = _split_sources(paths)
    if url is not None:
        _put_through_gateway(sources, cluster_path(target), url, key, recursive, where.as_json)
        return

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        done = await transfer.copy_all(sources, cluster_path(target), transfer.LocalSide(), transfer.ClusterSide(fs),
                                       lambda c, progress: fs.put_file(c.source, c.target, progress),
                                       recursive, jobs, failures, "put")
        if where.as_json:
            echo_json(_copies_json(done, failures))

    where.run("put", job)


def _put_through_gateway(sources: list[str], target: str, url: str, key: str | None, recursive: bool,
                         as_json: bool) -> None:
    """`put --url`: each file a resumable tus upload to the gateway (http_put.py); the exit
    codes of the file commands (3: the gateway unreachable or the key refused)."""
    from chunkfs.cli.http_put import HttpPutError, gateway_put

    if key is None:
        raise click.UsageError("--url needs an access key: --key ID:SECRET (or CHUNKFS_GATEWAY_KEY)")
    if recursive or any(os.path.isdir(s) for s in sources):
        raise click.UsageError("--url puts files, not directories (use a mount or the cluster for a tree)")
    failures = Failures("put")
    done = []
    with gateway_put(url, key) as gateway:
        for source in sources:
            remote = target
            if target.endswith("/") or len(sources) > 1:
                remote = target.rstrip("/") + "/" + os.path.basename(source)
            try:
                resumed = gateway.put(Path(source), remote)
            except OSError as exc:
                failures.report(source, exc)
                continue
            except HttpPutError as exc:
                if exc.status in (0, 401):
                    click.echo(f"chunkfs: put: {exc}", err=True)
                    sys.exit(EXIT_CLUSTER)
                failures.count += 1
                failures.messages.append({"path": source, "error": str(exc), "errno": ""})
                click.echo(f"chunkfs: put: {source}: {exc}", err=True)
                continue
            except KeyboardInterrupt:
                click.echo("chunkfs: put: interrupted (run it again to resume)", err=True)
                sys.exit(EXIT_INTERRUPTED)
            done.append({"source": source, "target": remote, "bytes": os.path.getsize(source),
                         "resumed_from": resumed})
    if as_json:
        echo_json({"copied": done, "failed": failures.messages})
    if failures.count:
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("paths", nargs=-1, metavar="REMOTE... LOCAL")
@RECURSIVE
@JOBS
@cluster_options
def get(paths: tuple[str, ...], recursive: bool, jobs: int, where: Where) -> None:
    """Copy files from the cluster to local disk. LOCAL ending in / (made if missing) or naming
    a directory receives the files under their names."""
    sources, target = _split_sources(paths)

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        done = await transfer.copy_all([cluster_path(s) for s in sources], target, transfer.ClusterSide(fs),
                                       transfer.LocalSide(), lambda c, progress: fs.get_file(c.source, c.target, progress),
                                       recursive, jobs, failures, "get")
        if where.as_json:
            echo_json(_copies_json(done, failures))

    where.run("get", job)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="REMOTE...")
@cluster_options
def cat(paths: tuple[str, ...], where: Where) -> None:
    """Write files of the cluster to stdout, one after the other."""
    out = sys.stdout.buffer

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        for path in map(cluster_path, paths):
            try:
                async with await fs.open(path, "rb") as f:
                    while data := await f.read(READ_BYTES):
                        out.write(data)
            except OSError as exc:
                failures.report(path, exc)
        out.flush()

    try:
        where.run("cat", job)
    except BrokenPipeError:  # the reader went away (`| head`): as cat does, say nothing
        sys.stderr.close()
        sys.exit(0)


def _entry_record(path: str, name: str, st: os.stat_result, target: str | None) -> dict[str, Any]:
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    return {"name": name, "path": path, "type": kind, "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink, "mtime": st.st_mtime,
            **({"target": target} if target is not None else {})}


def _owner(uid: int, gid: int) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return user, group


def _long_line(record: dict[str, Any], st: os.stat_result) -> str:
    user, group = _owner(st.st_uid, st.st_gid)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
    name = record["name"] + (f" -> {record['target']}" if "target" in record else "")
    return f"{stat.filemode(st.st_mode)} {st.st_nlink:>3} {user:<8} {group:<8} {st.st_size:>12} {when} {name}"


@click.command(name="ls")
@click.argument("path", default="/", metavar="[PATH]")
@click.option("-l", "long", is_flag=True, help="Mode, links, owner, group, size, time of change.")
@cluster_options
def ls(path: str, long: bool, where: Where) -> None:
    """List a directory of the cluster (or show one file)."""
    path = cluster_path(path)

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        try:
            st = await fs.lstat(path.rstrip("/") or "/")
            if stat.S_ISDIR(st.st_mode):
                listing = [(e.path, e.name, e.stat()) for e in await fs.scandir(path)]
            else:
                listing = [(path, posixpath.basename(path), st)]
            records = []
            for entry_path, name, entry_st in sorted(listing, key=lambda e: e[1]):
                target = await fs.readlink(entry_path) if stat.S_ISLNK(entry_st.st_mode) else None
                records.append((_entry_record(entry_path, name, entry_st, target), entry_st))
        except OSError as exc:
            failures.report(path, exc)
            return
        if where.as_json:
            echo_json([r for r, _ in records])
        for record, entry_st in [] if where.as_json else records:
            click.echo(_long_line(record, entry_st) if long else record["name"])

    where.run("ls", job)


async def _remove_tree(fs: AsyncFilesystem, top: str) -> None:
    """Everything below `top`, then `top`: files first, directories deepest first."""
    tree = await transfer.ClusterSide(fs).walk(top)
    for directory, files in tree:
        for name in files:
            await fs.remove(posixpath.join(directory, name))
    for directory, _files in reversed(tree):
        await fs.rmdir(directory)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and all below them.")
@click.option("-f", "--force", is_flag=True, help="A missing path is no error.")
@cluster_options
def rm(paths: tuple[str, ...], recursive: bool, force: bool, where: Where) -> None:
    """Remove files (and with -r directories) from the cluster."""

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        removed = []
        for path in map(cluster_path, paths):
            try:
                st = await fs.lstat(path.rstrip("/") or "/")
                if not stat.S_ISDIR(st.st_mode):
                    await fs.remove(path)
                elif recursive:
                    await _remove_tree(fs, path.rstrip("/") or "/")
                else:
                    failures.report(path, IsADirectoryError(errno.EISDIR, "Is a directory"), hint="use -r")
                    continue
                removed.append(path)
            except FileNotFoundError as exc:
                if not force:
                    failures.report(path, exc)
            except OSError as exc:
                failures.report(path, exc)
        if where.as_json:
            echo_json({"removed": removed, "failed": failures.messages})

    where.run("rm", job)


async def _bytes_below(fs: AsyncFilesystem, path: str) -> int:
    st = await fs.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for directory, files in await transfer.ClusterSide(fs).walk(path):
        for name in files:
            total += (await fs.lstat(posixpath.join(directory, name))).st_size
    return total


@click.command(context_settings={"help_option_names": ["--help"]})
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("-h", "--human", is_flag=True, help="KiB, MiB, GiB instead of bytes.")
@cluster_options
def size(paths: tuple[str, ...], human: bool, where: Where) -> None:
    """Size in bytes of a file, or of all files below a directory."""

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        sizes = {}
        for path in map(cluster_path, paths):
            try:
                sizes[path] = await _bytes_below(fs, path.rstrip("/") or "/")
            except OSError as exc:
                failures.report(path, exc)
        if where.as_json:
            echo_json([{"path": p, "bytes": n} for p, n in sizes.items()])
            return
        for path, n in sizes.items():
            shown = human_bytes(n) if human else str(n)
            click.echo(shown if len(paths) == 1 else f"{shown}\t{path}")

    where.run("size", job)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("-p", "--parents", is_flag=True, help="Make missing parents too; an existing directory is no error.")
@cluster_options
def mkdir(paths: tuple[str, ...], parents: bool, where: Where) -> None:
    """Make directories on the cluster."""

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        for path in map(cluster_path, paths):
            try:
                if parents:
                    await fs.makedirs(path, exist_ok=True)
                else:
                    await fs.mkdir(path)
            except OSError as exc:
                failures.report(path, exc)

    where.run("mkdir", job)


@click.command()
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@cluster_options
def mv(source: str, target: str, where: Where) -> None:
    """Rename SRC to DST on the cluster (into DST if it is a directory); one atomic rename."""
    source, target = cluster_path(source), cluster_path(target)

    async def job(fs: AsyncFilesystem, failures: Failures) -> None:
        destination = target
        if await transfer.ClusterSide(fs).kind(target.rstrip("/") or "/") == "dir":
            destination = posixpath.join(target, posixpath.basename(source.rstrip("/")))
        try:
            await fs.rename(source, destination.rstrip("/"))
        except OSError as exc:
            failures.report(source, exc)
            return
        if where.as_json:
            echo_json({"source": source, "target": destination})

    where.run("mv", job)


COMMANDS = (put, get, cat, ls, rm, size, mkdir, mv)
