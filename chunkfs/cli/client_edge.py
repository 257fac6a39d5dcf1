"""The one error edge of the file commands (`put`, `get`, `cat`, `ls`, `rm`, `size`, `mkdir`,
`mv`): they talk to the cluster through `chunkfs.client`, and every failure leaves here as one
line on stderr and an exit code a script can act on:

| exit | meaning |
|---|---|
| 0 | everything was done |
| 1 | an operation failed (no such file, permission denied, no space, ...): one line per path |
| 2 | usage: a wrong flag or argument (click's own code) |
| 3 | the cluster cannot be used: unreachable, the secret refused, or no secret to read |
| 130 | interrupted (Ctrl-C); a `put` leaves nothing half-written under the target name |
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click
import trio

from chunkfs import auth
from chunkfs.cli.cluster_access import ClusterAccess

if TYPE_CHECKING:
    from chunkfs.client import AsyncFilesystem

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CLUSTER = 3
EXIT_INTERRUPTED = 130

CLUSTER_ERRNOS = frozenset({errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
"""Errnos that say the cluster, not a path, is the trouble."""


class ClusterUnusable(Exception):
    """The cluster cannot be reached or refused us: the command cannot do anything (exit 3)."""


@dataclass
class Failures:
    """Per-path failures of one command: each is printed at once, the command goes on with the
    other paths (as cp and rm do) and exits 1 at the end."""

    command: str
    count: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: what fails from now on fails because it was cancelled

    def report(self, path: str, exc: OSError, hint: str = "") -> None:
        """`path` failed with `exc`, said in the words of strerror (and `hint`, what to do)."""
        if self.interrupted:
            return
        if exc.errno in CLUSTER_ERRNOS:
            raise ClusterUnusable(describe(exc)) from exc
        self.count += 1
        reason = reason_of(exc) + (f" ({hint})" if hint else "")
        self.messages.append({"path": path, "error": reason, "errno": errno.errorcode.get(exc.errno or 0, "")})
        click.echo(f"chunkfs: {self.command}: {path}: {reason}", err=True)


def reason_of(exc: OSError) -> str:
    """Why a path failed, as `ls` or `cp` would say it: strerror of the errno; for an I/O error
    also what the cluster said (with its request_id, to find it in the servers' logs)."""
    if not exc.errno:
        return str(exc) or type(exc).__name__
    reason = os.strerror(exc.errno)
    if exc.errno == errno.EIO and exc.strerror and exc.strerror != reason:
        reason += f": {exc.strerror}"
    return reason


def describe(exc: BaseException) -> str:
    """What went wrong with the cluster as a whole, in the client's own words."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.strerror or os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _exit(command: str, message: str, code: int) -> NoReturn:
    click.echo(f"chunkfs: {command}: {message}", err=True)
    sys.exit(code)


@asynccontextmanager
async def open_cluster(access: ClusterAccess, retry_s: float) -> AsyncIterator[AsyncFilesystem]:
    """The cluster as an async filesystem, checked to answer before a command relies on it: a
    wrong secret or a metaserver that is down is told apart from a missing path that way."""
    from chunkfs import client  # the client core is imported only by the commands that use it

    try:
        auth.load_secret(access.secret_file)
    except (OSError, ValueError) as exc:
        raise ClusterUnusable(f"cannot read the cluster secret {access.secret_file}: {describe(exc)}") from exc
    async with AsyncExitStack() as stack:
        try:
            fs = await stack.enter_async_context(
                client.open_filesystem(access.metaserver, secret_file=access.secret_file, retry_s=retry_s,
                                       tls_dir=access.tls_dir))
            await fs.stat("/")
        except OSError as exc:
            raise ClusterUnusable(f"cannot use the cluster at {access.metaserver}: {describe(exc)}") from exc
        yield fs


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _most_telling(exc: BaseException) -> BaseException:
    """Of the failures of parallel transfers, the one that decides the exit code: an interrupt,
    then a cluster that cannot be used, then anything else."""
    leaves = _leaves(exc)
    for kind in (KeyboardInterrupt, ClusterUnusable):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


async def _cancel_on_ctrl_c(scope: trio.CancelScope, failures: Failures) -> None:
    """Ctrl-C cancels the command's work as a whole, so every copy under way cleans up as it
    does on cancellation (a put removes its temporary file). Without this, trio raises
    KeyboardInterrupt in whichever task runs, deep inside the client, where it is no clean
    cancellation. A second Ctrl-C during the clean-up ends the command at once."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            failures.interrupted = True
            scope.cancel()
            return


def run_command(command: str, access: ClusterAccess, job: Callable[[AsyncFilesystem, Failures], Awaitable[Any]],
                retry_s: float = 15.0) -> Any:
    """Run `job` on the cluster under trio and map what escapes it to one line and an exit code
    (see the module's table). `job` reports failures of single paths to `Failures` and goes on."""
    failures = Failures(command)

    async def main() -> Any:
        result = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_ctrl_c, nursery.cancel_scope, failures)
            async with open_cluster(access, retry_s) as fs:
                result = await job(fs, failures)
            nursery.cancel_scope.cancel()
        if failures.interrupted:
            raise KeyboardInterrupt
        return result

    try:
        result = trio.run(main)
    except BaseException as raised:
        exc = _most_telling(raised)
        if isinstance(exc, ClusterUnusable):
            _exit(command, str(exc), EXIT_CLUSTER)
        if isinstance(exc, KeyboardInterrupt):
            _exit(command, "interrupted", EXIT_INTERRUPTED)
        if isinstance(exc, OSError):  # a failure no single path owns
            if exc.errno in CLUSTER_ERRNOS:
                _exit(command, f"cannot use the cluster at {access.metaserver}: {describe(exc)}", EXIT_CLUSTER)
            _exit(command, (f"{exc.filename}: " if exc.filename else "") + reason_of(exc), EXIT_FAILED)
        raise exc from None
    if failures.count:
        sys.exit(EXIT_FAILED)
    return result
