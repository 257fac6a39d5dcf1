"""Amounts the admin commands take: byte sizes (`10G`), counts (`100k`) and durations (`1d`)."""

from __future__ import annotations

import re
from typing import Any

import click

from chunkfs.protocol.limits import MAX_ID

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Amount(click.ParamType):
    """A byte size (`10G`, `1.5TiB`, `512M`: powers of 1024) or a count (`100k`: powers of
    1000), whole, 0 to 2^63-1."""

    name = "amount"

    def __init__(self, base: int) -> None:
        self.base = base

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _AMOUNT.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not an amount like 100, 10G or 100k", param, ctx)
        number, prefix = float(match.group(1)), match.group(2).lower()
        amount = int(number * self.base ** (" kmgtpe".index(prefix) if prefix else 0))
        if not 0 <= amount <= MAX_ID:
            self.fail(f"{value!r} is past the largest limit, {MAX_ID}", param, ctx)
        return amount


class Duration(click.ParamType):
    """Seconds, given as `90`, `90s`, `30m`, `24h`, `1d` or `2w`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration like 3600, 30m, 24h or 1d", param, ctx)
        return int(float(match.group(1)) * SECONDS[match.group(2).lower()])


BYTES, COUNT, DURATION = Amount(1024), Amount(1000), Duration()


def human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}".replace(".0", "")
    return f"{int(seconds)}s"
