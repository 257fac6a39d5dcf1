"""How the admin commands print: rich tables on stdout, JSON for scripts (`--json`), and a
progress bar on stderr for long work, only when stderr is a terminal (so pipes and logs stay clean)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                           Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.text import Text

console = Console()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def echo_json(data: Any, err: bool = False) -> None:
    """One JSON document on stdout (stderr with `err`): msgspec records, dicts and lists of them."""
    click.echo(json.dumps(msgspec.to_builtins(data)), err=err)


class RateColumn(ProgressColumn):
    """Items done a second (rich's estimate over the last half minute)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "", style="progress.data.speed")


def progress() -> Progress:
    """A progress display on stderr that shows nothing unless stderr is a terminal: items done
    of all, their rate, time spent and left; a task added with `total=None` pulses (work of
    unknown size)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    transient=True, disable=not sys.stderr.isatty())


def transfer_progress() -> Progress:
    """A byte-counting progress bar on stderr (bytes done of all, rate, time left), shown only
    when stderr is a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    transient=True, disable=not sys.stderr.isatty())
