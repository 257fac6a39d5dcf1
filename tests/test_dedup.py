"""Dedup through the mount: a file copied twice uploads its chunks once (bytes the chunkservers
stored, from their /metrics), `chunkfs status` shows one copy of physical data and `chunkfs
info` the shared chunks, the copies diverge when one is written, removing them frees the chunks,
and `chunkfs dedup DIR off` makes writers there upload everything. The reference counting against
a model: tests/test_dedup_model.py."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkfs.client import connect
from chunkfs.client.content_finder import WINDOW
from conftest import calls_made, chunkfs, fsync_directory, metrics_of, wait_until
from test_snapshots import fsck_clean

MiB = 1024 * 1024
SIZE = 3 * 4 * MiB + 3 * MiB // 2  # three whole chunks and a tail big enough to be looked for (1 MiB or more)


@pytest.fixture
def home(cluster, request):
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=cluster.mnt))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "source"
    path.write_bytes(os.urandom(SIZE))
    return path


def stored_on_chunkservers(cluster) -> float:
    """Chunk bytes the chunkservers have stored so far (every replica)."""
    return sum(metrics_of(f"127.0.0.1:{cluster.port + i}")["chunkfs_chunkserver_written_bytes_total"]
               for i in range(1, cluster.chunkservers + 1))


def test_a_file_copied_twice_is_uploaded_once(cluster, home, source):
    before, status_before = stored_on_chunkservers(cluster), cluster.status()
    shutil.copyfile(source, home / "a")
    assert stored_on_chunkservers(cluster) - before == SIZE * cluster.goal
    shutil.copyfile(source, home / "b")
    assert stored_on_chunkservers(cluster) - before == SIZE * cluster.goal  # nothing uploaded for b
    data = source.read_bytes()
    assert (home / "a").read_bytes() == data and (home / "b").read_bytes() == data
    status = cluster.status()
    assert status["chunk_bytes"] - status_before["chunk_bytes"] == 2 * SIZE  # logical: both files
    assert status["stored_bytes"] - status_before["stored_bytes"] == SIZE  # physical: one copy
    status_text = chunkfs("status", "--dir", cluster.dir).stdout
    assert "dedup ratio" in status_text and "physical" in status_text
    info = json.loads(chunkfs("info", home / "b", "--dir", cluster.dir, "--json").stdout)
    assert [c["holders"] for c in info["chunks"]] == [2, 2, 2, 2]
    assert "shared" in chunkfs("info", home / "b", "--dir", cluster.dir).stdout
    fsck_clean(cluster)


def test_copies_diverge_when_one_is_written_and_their_removal_frees_the_chunks(cluster, home, source):
    status_before = cluster.status()
    shutil.copyfile(source, home / "a")
    shutil.copyfile(source, home / "b")
    with open(home / "b", "r+b") as f:  # one chunk of b rewritten: b's own version from now on
        f.seek(5 * MiB)
        f.write(b"b's own")
    data = source.read_bytes()
    assert (home / "a").read_bytes() == data
    assert (home / "b").read_bytes() == data[: 5 * MiB] + b"b's own" + data[5 * MiB + 7:]
    info = json.loads(chunkfs("info", home / "b", "--dir", cluster.dir, "--json").stdout)
    assert [c["holders"] for c in info["chunks"]] == [2, 1, 2, 2]
    os.unlink(home / "a")
    assert (home / "b").read_bytes()[:MiB] == data[:MiB]  # still held by b
    os.unlink(home / "b")
    fsync_directory(home)  # the unlinks reach the metaserver, also where the mount answers them itself (write_behind_s)
    wait_until(lambda: cluster.status()["pending_deletions"] == 0, 60, "the deleter done with both files")
    status = cluster.status()
    assert status["stored_bytes"] == status_before["stored_bytes"]
    assert status["chunk_bytes"] == status_before["chunk_bytes"]
    fsck_clean(cluster)  # no record names a chunk the disks lost, no reference count wrong


def test_dedup_off_for_a_directory_uploads_everything(cluster, home, source):
    (home / "raw").mkdir()
    assert "dedup on" in chunkfs("dedup", home / "raw", "--dir", cluster.dir).stdout
    chunkfs("dedup", home / "raw", "off", "--dir", cluster.dir)
    shutil.copyfile(source, home / "a")
    before = stored_on_chunkservers(cluster)
    shutil.copyfile(source, home / "raw" / "b")  # made in raw: inherits its setting
    assert stored_on_chunkservers(cluster) - before == SIZE * cluster.goal
    assert json.loads(chunkfs("dedup", home / "raw" / "b", "--dir", cluster.dir, "--json").stdout)["dedup"] is False
    assert (home / "raw" / "b").read_bytes() == source.read_bytes()


@contextlib.contextmanager
def no_room_for_new_chunks(cluster) -> Iterator[None]:
    """Every chunkserver drained: none takes a new chunk, so a reservation is refused with
    ENOSPC as when all are full (`registry.writable`); each takes chunks again after."""
    addresses = [s["address"] for s in cluster.status()["servers"]]
    try:
        for address in addresses:
            chunkfs("drain", address, "--dir", cluster.dir)
        yield
    finally:
        for address in addresses:
            chunkfs("drain", address, "--stop", "--dir", cluster.dir, check=False)


def test_a_copy_of_stored_content_is_written_on_a_cluster_without_room(cluster, home, source, tmp_path):
    """A write whose chunks are all dedup hits stores nothing new: it reserves nothing, so a
    cluster with no room for a new chunk takes it; new bytes there fail with ENOSPC."""
    remote = f"/{home.relative_to(cluster.mnt)}"
    with connect(cluster.metaserver, secret_file=cluster.secret_file) as fs:
        fs.put_file(source, f"{remote}/a")
    other = tmp_path / "other"
    other.write_bytes(os.urandom(SIZE))
    # a client of its own: one that wrote before has reservations left (for seconds) to spend
    with no_room_for_new_chunks(cluster), connect(cluster.metaserver, secret_file=cluster.secret_file) as fs:
        fs.put_file(source, f"{remote}/b")  # every chunk held already: nothing to reserve
        assert fs.open(f"{remote}/b").read() == source.read_bytes()
        with pytest.raises(OSError) as info:
            fs.put_file(other, f"{remote}/c")
        assert info.value.errno == errno.ENOSPC
        assert sorted(fs.listdir(remote)) == ["a", "b"]


def test_a_window_of_chunks_is_looked_up_in_one_call(cluster, home, tmp_path):
    """Writers ask about their chunks a window at a time (`content_finder`): a 64 MiB file (16
    chunks) costs at most ceil(16 / WINDOW) lookup calls, written the first time (every chunk
    a miss, uploaded) and copied again (every chunk a hit, nothing uploaded)."""
    source = tmp_path / "big"
    source.write_bytes(os.urandom(64 * MiB))
    most = math.ceil(16 / WINDOW)
    first = calls_made(cluster, lambda: shutil.copyfile(source, home / "a"))
    assert 1 <= first.get("dedup", 0) <= most
    before = stored_on_chunkservers(cluster)
    second = calls_made(cluster, lambda: shutil.copyfile(source, home / "b"))
    assert 1 <= second.get("dedup", 0) <= most
    assert stored_on_chunkservers(cluster) == before
    assert (home / "b").read_bytes() == source.read_bytes()
    info = json.loads(chunkfs("info", home / "b", "--dir", cluster.dir, "--json").stdout)
    assert [c["holders"] for c in info["chunks"]] == [2] * 16
    fsck_clean(cluster)


def test_a_write_back_bound_below_the_window_does_not_hold_writes_up(cluster, home, tmp_path):
    """A client whose write-back bound (8 MiB) holds fewer chunks than a lookup window: a writer
    waiting for room makes the gathered chunks go without a full window, so the writes go on;
    the copy of stored content still uploads nothing."""
    source = tmp_path / "big"
    source.write_bytes(os.urandom(48 * MiB))
    remote = f"/{home.relative_to(cluster.mnt)}"
    with connect(cluster.metaserver, secret_file=cluster.secret_file, max_dirty_mb=8) as fs:
        fs.put_file(source, f"{remote}/a")
        before = stored_on_chunkservers(cluster)
        fs.put_file(source, f"{remote}/b")
        assert stored_on_chunkservers(cluster) == before
        assert fs.open(f"{remote}/b").read() == source.read_bytes()


def test_chunks_of_one_content_asked_about_in_one_call_are_each_committed(cluster, home, tmp_path):
    """A file of four equal chunks: copied again, its four lookups go in one call and find the
    same stored version, pinned once per answer, so the commit's four shared refs are each let in."""
    block = os.urandom(4 * MiB)
    source = tmp_path / "repeated"
    source.write_bytes(block * 4)
    shutil.copyfile(source, home / "a")
    before = stored_on_chunkservers(cluster)
    calls = calls_made(cluster, lambda: shutil.copyfile(source, home / "b"))
    assert calls.get("dedup", 0) == 1
    assert stored_on_chunkservers(cluster) == before
    assert (home / "b").read_bytes() == block * 4
    fsck_clean(cluster)
