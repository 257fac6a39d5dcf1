"""A file unlinked (or replaced by a rename) while it is open stays readable and writable through
its open descriptors until the last close, as on ext4; then its chunks go. A client that dies
with such a file open leaves it to the metaserver, which frees it when the client's session ends."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.daemons import abort_fuse_connection, unmount
from conftest import _cluster, chunkfs, wait_until


ONE_SERVER = {"chunkservers": 1, "goal": 1, "up_options": ("--client-timeout-s", "3", "--orphan-grace-s", "4")}


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One chunkserver (one chunk file per chunk) and a metaserver that ends a silent client's
    session after 3 s and lets gc take an uncommitted upload 4 s after its reservation. Each test looks only at its own files, so any order works."""
    yield from _cluster(tmp_path_factory, **ONE_SERVER)


def chunk_ids(cluster, path: Path) -> set[int]:
    layout = json.loads(chunkfs("info", path, "--dir", cluster.dir, "--json").stdout)
    return {chunk["chunk_id"] for chunk in layout["chunks"]}


def chunk_files(cluster, ids: set[int]) -> list[Path]:
    """The chunk files (any version) of these chunks on the chunkservers."""
    prefixes = tuple(f"{chunk_id:016x}_" for chunk_id in ids)
    return [p for p in (cluster.dir / "chunkservers").glob("*/chunks/*/*.chunk") if p.name.startswith(prefixes)]


def chunks_held(cluster, ids: set[int]) -> set[int]:
    """Those of these chunks that some chunkserver still holds a version of."""
    return {int(p.name.split("_")[0], 16) for p in chunk_files(cluster, ids)}


def test_unlinked_open_file_lives_until_its_last_close(shared_cluster):
    fresh_cluster = shared_cluster
    files_before = fresh_cluster.status()["files"]
    path = fresh_cluster.mnt / "scratch"
    data = os.urandom(CHUNK_SIZE + 4096)  # two chunks
    path.write_bytes(data)
    ids = chunk_ids(fresh_cluster, path)
    assert len(ids) == 2
    fd = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        assert not path.exists()
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"still here", CHUNK_SIZE - 5)  # across the chunk boundary
        os.fsync(fd)
        expected = data[: CHUNK_SIZE - 5] + b"still here" + data[CHUNK_SIZE + 5:]
        assert os.pread(other, len(data) + 10, 0) == expected
        os.close(fd)  # returns before FUSE's release: the file must outlive that too
        fd = -1
        assert os.pread(other, 64, CHUNK_SIZE - 5) == expected[CHUNK_SIZE - 5: CHUNK_SIZE + 59]
        assert os.fstat(other).st_size == len(data)
        assert chunks_held(fresh_cluster, ids) == ids, "the chunks stay while a descriptor is open"
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(other)
    wait_until(lambda: chunk_files(fresh_cluster, ids) == [], 30, "the chunks are freed after the last close")
    assert fresh_cluster.status()["files"] == files_before
    assert "scratch" not in os.listdir(fresh_cluster.mnt)


def test_rename_over_an_open_file_keeps_the_old_one_readable(shared_cluster):
    fresh_cluster = shared_cluster
    target, new = fresh_cluster.mnt / "config", fresh_cluster.mnt / "config.new"
    target.write_bytes(b"old " * 20000)
    new.write_bytes(b"new " * 20000)
    old_ids, new_ids = chunk_ids(fresh_cluster, target), chunk_ids(fresh_cluster, new)
    with open(target, "rb") as old_reader:
        os.rename(new, target)
        assert target.read_bytes() == b"new " * 20000
        assert old_reader.read() == b"old " * 20000
        assert os.fstat(old_reader.fileno()).st_nlink == 0
    wait_until(lambda: chunk_files(fresh_cluster, old_ids) == [], 30, "the replaced file's chunk is freed at its close")
    assert chunks_held(fresh_cluster, new_ids) == new_ids
    assert target.read_bytes() == b"new " * 20000


def test_hard_linked_file_unlinked_while_open_keeps_its_other_name(shared_cluster):
    fresh_cluster = shared_cluster
    a, b = fresh_cluster.mnt / "a", fresh_cluster.mnt / "b"
    a.write_bytes(b"shared" * 20000)  # past the inline limit: in a chunk, freed with the file
    ids = chunk_ids(fresh_cluster, a)
    os.link(a, b)
    with open(a, "r+b") as f:
        os.unlink(a)
        f.write(b"SHARED")
    assert b.read_bytes() == b"SHARED" + b"shared" * 19999
    assert os.stat(b).st_nlink == 1
    assert chunks_held(fresh_cluster, ids) == ids
    os.unlink(b)
    wait_until(lambda: chunk_files(fresh_cluster, ids) == [], 30, "the file's chunk is freed with its last name")


def test_removed_directory_open_here_stays_until_closed(shared_cluster):
    fresh_cluster = shared_cluster
    directories_before = fresh_cluster.status()["directories"]
    path = fresh_cluster.mnt / "gone"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(path)
        assert os.fstat(fd).st_nlink == 0
        assert os.listdir(fd) == []
        os.fchmod(fd, 0o700)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o700
        with pytest.raises(FileNotFoundError):
            os.open("new", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
    finally:
        os.close(fd)
    wait_until(lambda: fresh_cluster.status()["directories"] == directories_before, 30,
               "the removed directory is freed at its close")


@pytest.mark.parametrize("how", ["created in a directory made here", "created", "opened"])
def test_attribute_changes_on_an_unlinked_open_file_keep_its_link_count(shared_cluster, how):
    """fchmod, fchown, futimens, ftruncate and a write + fsync of an open file whose names go
    answer its attributes, and the kernel shows that answer to fstat: st_nlink must follow the
    names (2, 1, then 0 as an orphan), as on ext4. A file created here keeps such changes for its
    commit, and once answered them with the link count it was created with."""
    files_before = shared_cluster.status()["files"]
    where = shared_cluster.mnt / "nlink-dir" if how == "created in a directory made here" else shared_cluster.mnt
    where.mkdir(exist_ok=True)
    path, other_name = where / "nlink-orphan", where / "nlink-other-name"
    if how == "opened":
        path.write_bytes(b"old")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.link(path, other_name)
        steps = [("fchmod", lambda: os.fchmod(fd, 0o600)), ("fchown", lambda: os.fchown(fd, 1000, 1000)),
                 ("futimens", lambda: os.utime(fd, ns=(10**9, 2 * 10**9))),
                 ("ftruncate", lambda: os.ftruncate(fd, 10)),
                 ("write + fsync", lambda: (os.pwrite(fd, b"more", 20), os.fsync(fd)))]
        for unlinked, nlink in ((None, 2), (path, 1), (other_name, 0)):
            if unlinked is not None:
                os.unlink(unlinked)
            assert os.fstat(fd).st_nlink == nlink, f"after unlinking {unlinked}"
            for what, step in steps:
                step()
                assert os.fstat(fd).st_nlink == nlink, f"after {what}, {nlink} names left"
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o600, 1000, 1000, 24)
        assert os.pread(fd, 30, 0) == (b"old" if how == "opened" else b"\0" * 3) + b"\0" * 17 + b"more"
    finally:
        os.close(fd)
        for name in (path, other_name):
            with contextlib.suppress(FileNotFoundError):
                name.unlink()
    wait_until(lambda: shared_cluster.status()["files"] == files_before, 30,
               "the orphan is freed at its last close")
    if where != shared_cluster.mnt:
        where.rmdir()


@pytest.mark.parametrize("written", ["before its chunk is deleted", "after its chunk is deleted"])
def test_unlink_on_another_client_ends_the_file_for_this_one(shared_cluster, tmp_path, written):
    """The documented difference (README): only the unlinking client's open files are kept; the
    other's writes fail at fsync and close with ESTALE, whether its commit finds the inode gone
    or the chunk it patches is gone already."""
    fresh_cluster = shared_cluster
    other = tmp_path / "client-b"
    chunkfs("mount", fresh_cluster.metaserver, other, "--secret-file", fresh_cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-b'}")
    try:
        (fresh_cluster.mnt / "shared").write_bytes(b"shared data" * 10000)
        ids = chunk_ids(fresh_cluster, fresh_cluster.mnt / "shared")
        fd = os.open(other / "shared", os.O_RDWR)
        try:
            os.unlink(fresh_cluster.mnt / "shared")
            if written == "after its chunk is deleted":
                wait_until(lambda: chunk_files(fresh_cluster, ids) == [], 30, "the unlinked file's chunk is deleted")
            os.pwrite(fd, b"more", 0)
            with pytest.raises(OSError) as failure:
                os.fsync(fd)
            assert failure.value.errno == errno.ESTALE
            os.pwrite(fd, b"again", 0)
            with pytest.raises(OSError) as at_close:
                os.close(fd)
            fd = -1  # closed, though close reported the lost write
            assert at_close.value.errno == errno.ESTALE
        finally:
            if fd >= 0:
                os.close(fd)
    finally:
        unmount(other)
    # what b uploaded and never committed is left to garbage collection (after a grace of 4 s here)
    def collected() -> bool:
        chunkfs("gc", "--min-age-s", "0", "--wait", "30", "--dir", fresh_cluster.dir)
        return chunk_files(fresh_cluster, ids) == []

    wait_until(collected, 30, "the file's chunk versions are gone", poll_s=1)


@pytest.fixture
def crashing_cluster(tmp_path_factory):
    """A cluster of its own: its mount is killed."""
    yield from _cluster(tmp_path_factory, **ONE_SERVER)


def test_unlinked_files_of_a_crashed_client_are_freed_when_its_session_ends(crashing_cluster):
    fresh_cluster = crashing_cluster
    path = fresh_cluster.mnt / "held"
    path.write_bytes(os.urandom(CHUNK_SIZE // 2))
    ids = chunk_ids(fresh_cluster, path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); os.unlink(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(5)  # a duration, not a wait for something: past the session time-out (3 s),
        assert chunks_held(fresh_cluster, ids) == ids  # a live client keeps its orphans
        fresh_cluster.kill("mount")
    finally:
        holder.kill()
        holder.wait(timeout=10)
        abort_fuse_connection(fresh_cluster.mnt)
        subprocess.run(["fusermount3", "-uz", str(fresh_cluster.mnt)], capture_output=True)
    wait_until(lambda: chunk_files(fresh_cluster, ids) == [], 30, "the dead client's orphan is collected")
    assert fresh_cluster.status()["files"] == 0
