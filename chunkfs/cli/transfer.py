"""`put` and `get` as one thing seen from two sides: which files go where (the plan, as `cp`
and `cp -r` would name them), then the copies, `jobs` at a time, under one progress bar.

Naming, the same both ways: a target that ends in `/`, names a directory, or receives several
sources is a directory and each source goes into it under its own name (the directory is made
if missing); otherwise the one source is copied to the target name. A directory source needs
`recursive`; it is copied whole, as `cp -r` does.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from chunkfs.cli.client_edge import Failures
from chunkfs.cli.output import transfer_progress

if TYPE_CHECKING:
    from chunkfs.client import AsyncFilesystem

Progress = Callable[[int], None]


class Side(Protocol):
    """Local disk or the cluster, as far as planning a copy needs them."""

    async def kind(self, path: str) -> str | None:
        """"dir", "file" (anything else that can be read) or None when missing."""

    async def walk(self, top: str) -> list[tuple[str, list[str]]]:
        """(directory, its files) for `top` and every directory below it, parents first."""

    async def size(self, path: str) -> int:
        ...

    async def make_directory(self, path: str) -> None:
        """`path` and its missing parents; one that is there is no error."""


def _kind(mode: int) -> str:
    return "dir" if stat.S_ISDIR(mode) else "file"


class LocalSide:
    async def kind(self, path: str) -> str | None:
        try:
            return _kind((await trio.to_thread.run_sync(os.stat, path)).st_mode)
        except FileNotFoundError:
            return None

    async def walk(self, top: str) -> list[tuple[str, list[str]]]:
        def walk() -> list[tuple[str, list[str]]]:
            found: list[tuple[str, list[str]]] = []

            def fail(exc: OSError) -> None:
                raise exc
            for directory, _dirs, files in os.walk(top, onerror=fail):
                found.append((directory, sorted(files)))
            return found
        return await trio.to_thread.run_sync(walk)

    async def size(self, path: str) -> int:
        return (await trio.to_thread.run_sync(os.stat, path)).st_size

    async def make_directory(self, path: str) -> None:
        await trio.to_thread.run_sync(lambda: os.makedirs(path, exist_ok=True))


class ClusterSide:
    def __init__(self, fs: AsyncFilesystem) -> None:
        self.fs = fs

    async def kind(self, path: str) -> str | None:
        try:
            return _kind((await self.fs.stat(path)).st_mode)
        except FileNotFoundError:
            return None

    async def walk(self, top: str) -> list[tuple[str, list[str]]]:
        found: list[tuple[str, list[str]]] = []
        pending = [top]
        while pending:
            directory = pending.pop(0)
            files: list[str] = []
            subdirs: list[str] = []
            for entry in await self.fs.scandir(directory):
                (subdirs if entry.is_dir() else files).append(entry.name)
            found.append((directory, sorted(files)))
            pending.extend(posixpath.join(directory, d) for d in sorted(subdirs))
        return found

    async def size(self, path: str) -> int:
        return (await self.fs.stat(path)).st_size

    async def make_directory(self, path: str) -> None:
        await self.fs.makedirs(path, exist_ok=True)


@dataclass(frozen=True)
class Copy:
    source: str
    target: str
    size_bytes: int


@dataclass
class Plan:
    directories: list[str] = field(default_factory=list)  # to make on the target side, parents first
    copies: list[Copy] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(c.size_bytes for c in self.copies)


async def plan(sources: list[str], target: str, source_side: Side, target_side: Side,
               recursive: bool, failures: Failures) -> Plan:
    """What to copy where; a source that cannot be copied is reported and left out."""
    result = Plan()
    target_kind = await target_side.kind(target.rstrip("/") or "/")
    into = target.endswith("/") or target_kind == "dir" or len(sources) > 1
    target = target.rstrip("/") or "/"
    if into and target_kind is None:
        result.directories.append(target)
    elif into and target_kind != "dir":
        failures.report(target, NotADirectoryError(errno.ENOTDIR, "Not a directory"))
        return result
    for source in sources:
        kind = await source_side.kind(source)
        destination = posixpath.join(target, posixpath.basename(source.rstrip("/")) or "/") if into else target
        if kind is None:
            failures.report(source, FileNotFoundError(errno.ENOENT, "No such file or directory"))
        elif kind == "file":
            result.copies.append(Copy(source, destination, await source_side.size(source)))
        elif not recursive:
            failures.report(source, IsADirectoryError(errno.EISDIR, "Is a directory"), hint="use -r")
        else:
            await _plan_tree(source.rstrip("/") or "/", destination, source_side, result)
    return result


async def _plan_tree(source: str, destination: str, source_side: Side, result: Plan) -> None:
    for directory, files in await source_side.walk(source):
        below = posixpath.relpath(directory, source)
        made = destination if below == "." else posixpath.join(destination, below)
        result.directories.append(made)
        for name in files:
            path = posixpath.join(directory, name)
            result.copies.append(Copy(path, posixpath.join(made, name), await source_side.size(path)))


CopyOne = Callable[[Copy, Progress], Awaitable[None]]


async def copy_all(sources: list[str], target: str, source_side: Side, target_side: Side, copy: CopyOne,
                   recursive: bool, jobs: int, failures: Failures, what: str) -> list[Copy]:
    """Plan, then run: the copies done."""
    return await run(await plan(sources, target, source_side, target_side, recursive, failures),
                     target_side.make_directory, copy, jobs, failures, what)


async def run(plan: Plan, make_directory: Callable[[str], Awaitable[None]], copy: CopyOne, jobs: int,
              failures: Failures, what: str) -> list[Copy]:
    """Make the plan's directories, then its copies `jobs` at a time; the copies done. A copy
    that fails is reported and the others go on; Ctrl-C cancels them all (each `copy` promises
    to leave nothing half-written under its target name)."""
    for directory in plan.directories:
        try:
            await make_directory(directory)
        except OSError as exc:
            failures.report(directory, exc)
            return []
    done: list[Copy] = []
    limiter = trio.CapacityLimiter(jobs)
    description = f"{what} {len(plan.copies)} file{'s' * (len(plan.copies) != 1)}"
    with transfer_progress(description, plan.total_bytes) as progress:

        async def one(c: Copy) -> None:
            async with limiter:
                try:
                    await copy(c, progress.add)
                except OSError as exc:  # named by what the user named: the source, or the target
                    failures.report(c.source if exc.filename == c.source else c.target, exc)
                    return
            done.append(c)

        async with trio.open_nursery() as nursery:
            for c in plan.copies:
                nursery.start_soon(one, c)
    return done
