"""A directory with very many entries lists and looks up without a cost that grows with its
size, counted in metaserver calls: a lookup is one call (one B-tree search) whatever the size,
a listing one call per page of 1,000 entries. Checked at 1,000 entries and at a larger size
(100,000 with --long, 3,000 by default). How long each takes is for the benchmark:
bench/large_directory.py."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest

from bench.large_directory import empty, fill, forget_dentries
from conftest import calls_made, fsync_directory

SAMPLE = 300
PAGE = 1000  # entries per readdir call


def check_costs(cluster, directory, count: int) -> None:
    fsync_directory(directory)  # what the mount answered itself (write_behind_s) is sent first: only the lookups below count
    rng = random.Random(count)
    names = [f"entry-{rng.randrange(count):06d}" for _ in range(SAMPLE)]
    forget_dentries()
    found = calls_made(cluster, lambda: [os.stat(directory / name) for name in names])
    assert found.get("lookup", 0) <= SAMPLE and set(found) <= {"lookup", "getattr"}, found

    def look_for_missing() -> None:
        for i in range(SAMPLE):
            assert not os.path.exists(directory / f"missing-{i}")
    missing = calls_made(cluster, look_for_missing)
    assert missing.get("lookup", 0) <= SAMPLE and set(missing) <= {"lookup"}, missing

    forget_dentries()
    listed: list[str] = []
    listing = calls_made(cluster, lambda: listed.extend(os.listdir(directory)))
    assert sorted(listed) == [f"entry-{i:06d}" for i in range(count)]
    pages = math.ceil(count / PAGE)
    assert pages <= listing.get("readdir", 0) <= pages + 1, (count, listing)


def make_directory(cluster, count: int, made: list[Path]) -> Path:
    """`large-COUNT` with `count` empty files, listed in `made` as soon as it exists."""
    directory = cluster.mnt / f"large-{count}"
    directory.mkdir()
    made.append(directory)
    fill(directory, 0, count)
    return directory


@pytest.fixture
def directories(cluster):
    """Makes directories of a given size in the module's shared cluster; empties and removes them
    after the test."""
    made: list[Path] = []

    def make(count: int) -> Path:
        return make_directory(cluster, count, made)

    yield make
    for directory in made:
        empty(directory)
        directory.rmdir()


def check_scaling(cluster, directories, big: int) -> None:
    for count in (1000, big):
        check_costs(cluster, directories(count), count)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop the kernel's name cache")
def test_directory_of_3k_entries(cluster, directories):
    check_scaling(cluster, directories, 3_000)


@pytest.mark.long
@pytest.mark.timeout(7200)  # 101,000 creates (with the unlinks, it took most of an hour on a loaded machine)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop the kernel's name cache")
def test_directory_of_100k_entries(fresh_cluster):
    """On a cluster of its own, which goes away with its directories: unlinking the 101,000
    entries through the mount, which nothing here checks, would cost as many calls again as
    making them."""
    check_scaling(fresh_cluster, lambda count: make_directory(fresh_cluster, count, []), 100_000)
