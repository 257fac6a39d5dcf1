"""How the admin commands print: rich tables on stdout, JSON for scripts (`--json`), and a
progress bar on stderr for long work, only when stderr is a terminal (so pipes and logs stay clean).

rich is imported when something is shown with it (`console`, a progress bar on a terminal), not
at import: a file command run by a script (`chunkfs put` in a pipeline) spends no start-up time
on it.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

import click
import msgspec

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


@cache
def _stdout_console() -> Console:
    from rich.console import Console

    return Console()


def __getattr__(name: str) -> Any:
    """`console`, the rich console on stdout, made at its first use (PEP 562)."""
    if name == "console":
        return _stdout_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def echo_json(data: Any, err: bool = False) -> None:
    """One JSON document on stdout (stderr with `err`): msgspec records, dicts and lists of them."""
    click.echo(json.dumps(msgspec.to_builtins(data)), err=err)


def progress() -> Progress:
    """A progress display on stderr that shows nothing unless stderr is a terminal: items done
    of all, their rate, time spent and left; a task added with `total=None` pulses (work of
    unknown size)."""
    from chunkfs.cli.progress_bars import item_progress

    return item_progress()


class ByteProgress:
    """What a transfer tells of its progress, in a `with` block: `add(n)` more bytes moved."""

    def add(self, n: int) -> None:
        """Nothing shown (stderr is no terminal)."""

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class _ByteProgressBar(ByteProgress):
    def __init__(self, bar: Progress, description: str, total_bytes: int) -> None:
        self._bar = bar
        self._task = bar.add_task(description, total=total_bytes)

    def add(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def __enter__(self) -> ByteProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()


def transfer_progress(description: str, total_bytes: int) -> ByteProgress:
    """A byte-counting progress bar on stderr (bytes done of all, rate, time left) when stderr is
    a terminal; otherwise one that shows and costs nothing (rich is not even imported)."""
    if not sys.stderr.isatty():
        return ByteProgress()
    from chunkfs.cli.progress_bars import byte_progress

    return _ByteProgressBar(byte_progress(), description, total_bytes)
