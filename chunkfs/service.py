"""Running under systemd: readiness, the watchdog, stopping, and logging to the journal.

A unit with `Type=notify` waits for `READY=1` before it starts what comes `After=` it, so each
daemon sends it only once it serves: the servers when their socket listens and every startup
hook has run, the mount once the filesystem is mounted. With `WatchdogSec=` set, systemd passes
`WATCHDOG_USEC` and restarts a daemon whose event loop stops pinging for that long; the pings come
from the event loop itself, so a loop that hangs is what gets caught.

Everything here does nothing when `NOTIFY_SOCKET` is unset (not started by systemd), so the
same code runs under `chunkfs up`, `mount -t chunkfs` and a shell.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import sdnotify
from aiohttp import web


def _send(state: str) -> None:
    """One datagram to systemd; failures are ignored, as sd_notify(3) does."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    notifier = sdnotify.SystemdNotifier()
    notifier.notify(state)
    if notifier.socket is not None:
        notifier.socket.close()


def notify_ready(status: str = "") -> None:
    """Tell systemd the daemon serves (and, optionally, a one-line status for `systemctl status`)."""
    _send("READY=1" + (f"\nSTATUS={status}" if status else ""))


def notify_stopping() -> None:
    _send("STOPPING=1")


def watchdog_interval_s() -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when no watchdog is
    asked for, or it is meant for another process (`WATCHDOG_PID`)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = int(os.environ.get("WATCHDOG_PID", os.getpid()))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


async def watchdog(sleep: Callable[[float], Awaitable[None]]) -> None:
    """Ping the watchdog until cancelled (returns at once when there is none). `sleep` is the
    event loop's: `asyncio.sleep` for the servers, `trio.sleep` in the mount's nursery."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        _send("WATCHDOG=1")
        await sleep(interval)


def attach(app: web.Application, status: str = "") -> None:
    """Tell systemd about an aiohttp daemon's life: READY at the end of startup, watchdog pings
    while it runs, STOPPING when shutdown begins.

    Add it after every other startup hook. `chunkfs.httpserver.serve` binds and listens on the
    socket before startup runs, so after READY a client that connects is served."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        notify_ready(status)
        task = asyncio.create_task(watchdog(asyncio.sleep))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stopping(app: web.Application) -> None:
        notify_stopping()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(stopping)


def logging_to_journal() -> bool:
    """Whether stderr is the journal: `JOURNAL_STREAM` names its device and inode (a daemon whose
    stderr was redirected elsewhere inherits the variable but not the stream)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _sep, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own) and a `<N>` syslog priority prefix, so
    `journalctl -p err` finds the errors."""

    PRIORITIES: ClassVar[dict[int, int]] = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        # every line of a traceback gets the prefix, or journald would log it at the default level
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())
