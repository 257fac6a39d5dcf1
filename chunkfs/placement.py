"""Where chunk replicas go: distinct servers, drawn with probability weighted by free space.

Shared by the metaserver (which hands out candidate servers) and the mount (which draws the
servers for each chunk from its reservation, so consecutive chunks spread over the cluster).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def weighted_order(items: Sequence[T], weights: Sequence[int], rng: random.Random | None = None) -> list[T]:
    """All `items` with weight > 0 in a random order where heavier items tend to come first."""
    uniform = rng.uniform if rng is not None else random.uniform
    pool = [(item, w) for item, w in zip(items, weights, strict=True) if w > 0]
    order: list[T] = []
    while pool:
        pick = uniform(0, sum(w for _i, w in pool))
        for i, (item, w) in enumerate(pool):
            pick -= w
            if pick <= 0 or i == len(pool) - 1:
                order.append(item)
                del pool[i]
                break
    return order
