"""A file unlinked (or replaced by a rename) while it is open stays readable and writable through
its open descriptors until the last close, as on ext4; then its chunks go. A client that dies
with such a file open leaves it to the metaserver, which frees it when the client's session ends."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.daemons import abort_fuse_connection, unmount
from conftest import _cluster, chunkfs


@pytest.fixture(scope="module")
def fresh_cluster(tmp_path_factory):
    """One chunkserver (one chunk file per chunk) and a metaserver that ends a silent client's
    session after 3 s. The last test kills the mount."""
    yield from _cluster(tmp_path_factory, chunkservers=1, goal=1, up_options=("--client-timeout-s", "3"))


def chunk_files(cluster) -> list[Path]:
    return list((cluster.dir / "chunkservers").glob("*/chunks/*/*.chunk"))


def wait_until(predicate, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_unlinked_open_file_lives_until_its_last_close(fresh_cluster):
    path = fresh_cluster.mnt / "scratch"
    data = os.urandom(CHUNK_SIZE + 4096)  # two chunks
    path.write_bytes(data)
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
        os.close(fd)
        fd = -1
        time.sleep(0.5)
        assert os.pread(other, 64, CHUNK_SIZE - 5) == expected[CHUNK_SIZE - 5: CHUNK_SIZE + 59]
        assert os.fstat(other).st_size == len(data)
        assert len(chunk_files(fresh_cluster)) == 2, "the chunks stay while a descriptor is open"
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(other)
    assert wait_until(lambda: chunk_files(fresh_cluster) == []), "chunks are freed after the last close"
    assert fresh_cluster.status()["files"] == 0
    assert os.listdir(fresh_cluster.mnt) == []


def test_rename_over_an_open_file_keeps_the_old_one_readable(fresh_cluster):
    target, new = fresh_cluster.mnt / "config", fresh_cluster.mnt / "config.new"
    target.write_bytes(b"old " * 20000)
    new.write_bytes(b"new " * 20000)
    with open(target, "rb") as old_reader:
        os.rename(new, target)
        assert target.read_bytes() == b"new " * 20000
        assert old_reader.read() == b"old " * 20000
        assert os.fstat(old_reader.fileno()).st_nlink == 0
    assert wait_until(lambda: len(chunk_files(fresh_cluster)) == 1)
    assert target.read_bytes() == b"new " * 20000


def test_hard_linked_file_unlinked_while_open_keeps_its_other_name(fresh_cluster):
    a, b = fresh_cluster.mnt / "a", fresh_cluster.mnt / "b"
    a.write_bytes(b"shared" * 20000)  # past the inline limit: in a chunk, freed with the file
    os.link(a, b)
    with open(a, "r+b") as f:
        os.unlink(a)
        f.write(b"SHARED")
    assert b.read_bytes() == b"SHARED" + b"shared" * 19999
    assert os.stat(b).st_nlink == 1
    os.unlink(b)
    os.unlink(fresh_cluster.mnt / "config")
    assert wait_until(lambda: chunk_files(fresh_cluster) == [])


def test_removed_directory_open_here_stays_until_closed(fresh_cluster):
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
    assert wait_until(lambda: fresh_cluster.status()["directories"] == 1)  # only the root


def test_unlink_on_another_client_ends_the_file_for_this_one(fresh_cluster, tmp_path):
    """The documented difference (README): only the unlinking client's open files are kept."""
    other = tmp_path / "client-b"
    chunkfs("mount", fresh_cluster.metaserver, other, "--secret-file", fresh_cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-b'}")
    try:
        (fresh_cluster.mnt / "shared").write_bytes(b"shared data" * 10000)
        fd = os.open(other / "shared", os.O_RDWR)
        try:
            os.unlink(fresh_cluster.mnt / "shared")
            os.pwrite(fd, b"more", 0)
            with pytest.raises(OSError) as failure:
                os.fsync(fd)
            assert failure.value.errno in (errno.ESTALE, errno.ENOENT, errno.EIO)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    finally:
        unmount(other)
    assert wait_until(lambda: chunk_files(fresh_cluster) == [])


def test_unlinked_files_of_a_crashed_client_are_freed_when_its_session_ends(fresh_cluster):
    path = fresh_cluster.mnt / "held"
    path.write_bytes(os.urandom(CHUNK_SIZE // 2))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); os.unlink(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(5)  # longer than the session time-out: a live client keeps its orphans
        assert len(chunk_files(fresh_cluster)) == 1
        fresh_cluster.kill("mount")
    finally:
        holder.kill()
        holder.wait(timeout=10)
        abort_fuse_connection(fresh_cluster.mnt)
        subprocess.run(["fusermount3", "-uz", str(fresh_cluster.mnt)], capture_output=True)
    assert wait_until(lambda: chunk_files(fresh_cluster) == [], timeout_s=30), "the orphan is collected"
    assert fresh_cluster.status()["files"] == 0
