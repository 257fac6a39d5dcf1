"""The rich progress displays of the CLI, on stderr. Imported only when one is made
(`output.progress`, `output.transfer_progress`): rich costs start-up time a script's
`chunkfs put` has no use for."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                           Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items done a second (rich's estimate over the last half minute)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "", style="progress.data.speed")


def item_progress() -> Progress:
    """Items done of all, their rate, time spent and left; shows nothing unless stderr is a terminal."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    transient=True, disable=not sys.stderr.isatty())


def byte_progress() -> Progress:
    """Bytes done of all, rate, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
