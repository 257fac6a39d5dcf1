"""A chunkserver with several data directories (one per disk): new chunks go to the directory
with the most free space; reads, deletes, inventory and capacity cover them all."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from chunkfs.checksum import chunk_checksum
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.daemons import stop_pid
from chunkfs.errors import FsError
from conftest import free_port_block, metrics_of, wait_until

MiB = 1024 * 1024


@pytest.fixture
def two_disks(tmp_path):
    """Two small tmpfs "disks" of different sizes (48 and 64 MiB), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting tmpfs needs root")
    disks = [tmp_path / "disk-small", tmp_path / "disk-big"]
    mounted = []
    try:
        for disk, size in zip(disks, ("48m", "64m"), strict=True):
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
            mounted.append(disk)
        yield disks
    finally:
        for disk in mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def chunk_files(directory: Path) -> list[Path]:
    return list((directory / "chunks").glob("*/*.chunk"))


def put(store: ChunkStore, chunk_id: int, data: bytes, version: int = 1) -> None:
    store.write(chunk_id, version, data, chunk_checksum(data))


def test_new_chunks_go_where_there_is_most_room_and_everything_spans_the_disks(two_disks):
    small, big = two_disks
    store = ChunkStore([small, big])
    data = {i: os.urandom(4 * MiB - i) for i in range(1, 13)}
    put(store, 1, data[1])
    assert [len(chunk_files(d)) for d in (small, big)] == [0, 1]  # the bigger disk first
    for chunk_id in range(2, 13):
        put(store, chunk_id, data[chunk_id])
    counts = [len(chunk_files(d)) for d in (small, big)]
    assert sum(counts) == 12 and counts[0] >= 4 and counts[1] >= 6  # then whichever has more room
    free = [os.statvfs(d).f_bavail * os.statvfs(d).f_frsize for d in (small, big)]
    assert abs(free[0] - free[1]) <= 5 * MiB

    assert all(store.read(i, 1) == data[i] for i in data)
    old, recent = store.inventory(0)
    assert sorted(old + recent) == [(i, 1) for i in range(1, 13)]
    capacity, used = store.capacity()
    assert used == sum(f.stat().st_size for d in (small, big) for f in chunk_files(d))
    assert capacity == used + sum(free)
    usage = {u.dir: u for u in store.dir_usage()}
    assert [usage[str(d)].chunks for d in (small, big)] == counts
    assert usage[str(small)].disk_bytes == 48 * MiB and usage[str(big)].disk_bytes == 64 * MiB

    in_small = int(chunk_files(small)[0].stem.split("_")[0], 16)
    assert store.delete(in_small, 1) and not store.delete(in_small, 1)
    with pytest.raises(FsError) as deleted:
        store.read(in_small, 1)
    assert deleted.value.errno == errno.ENOENT
    assert store.chunk_count == 11

    again = ChunkStore([big, small])  # order does not matter; counts are found again
    assert again.server_id == store.server_id and again.chunk_count == 11 and again.used_bytes == store.used_bytes


def test_a_disk_of_another_chunkserver_is_refused(tmp_path):
    ChunkStore(tmp_path / "a")
    ChunkStore(tmp_path / "b")
    with pytest.raises(FsError, match="different chunkservers") as refused:
        ChunkStore([tmp_path / "a", tmp_path / "b"])
    assert refused.value.errno == errno.EINVAL
    ChunkStore([tmp_path / "a", tmp_path / "new"])  # an empty (replaced) disk joins
    assert (tmp_path / "new" / "server_id").read_text() == (tmp_path / "a" / "server_id").read_text()


def test_data_dir_and_data_dirs_options(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    both = subprocess.run([sys.executable, "-m", "chunkfs.chunkserver.main", "--secret-file", str(secret),
                           "--data-dir", str(tmp_path / "a"), "--data-dirs", f"{tmp_path / 'b'},{tmp_path / 'c'}"],
                          capture_output=True, text=True, timeout=30)
    assert both.returncode == 2 and "give one of them, not both" in both.stderr
    twice = subprocess.run([sys.executable, "-m", "chunkfs.chunkserver.main", "--secret-file", str(secret),
                            "--data-dirs", f"{tmp_path / 'b'},{tmp_path / 'b'}"],
                           capture_output=True, text=True, timeout=30)
    assert twice.returncode == 2 and "listed twice" in twice.stderr
    ChunkStore(tmp_path / "d")
    ChunkStore(tmp_path / "e")
    mixed = subprocess.run([sys.executable, "-m", "chunkfs.chunkserver.main", "--secret-file", str(secret),
                            "--data-dirs", f"{tmp_path / 'd'},{tmp_path / 'e'}"],
                           capture_output=True, text=True, timeout=30)
    assert mixed.returncode == 2 and "belong to different chunkservers" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1, mixed.stderr


def sample(address: str, name: str) -> float:
    """The sum of a metric's samples on a daemon's /metrics."""
    return sum(v for k, v in metrics_of(address).items() if k.partition("{")[0] == name)


def server_status(cluster, address: str) -> dict:
    return next(s for s in cluster.status()["servers"] if s["address"] == address)


def start_chunkserver(cluster, address: str, dirs: list[Path], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "chunkfs.chunkserver.main", "--listen", address,
                                 "--data-dirs", ",".join(map(str, dirs)), "--metaserver", cluster.metaserver,
                                 "--secret-file", str(cluster.secret_file), "--heartbeat-interval-s", "0.5"],
                                stdout=out, stderr=out)


@pytest.mark.parametrize("fresh_cluster", [{"chunkservers": 1, "goal": 2,
                                            "mount_options": "retry_s=5,cache_mem_mb=8"}], indirect=True)
def test_a_chunkserver_on_two_disks_serves_a_cluster(fresh_cluster, two_disks, tmp_path):
    cluster = fresh_cluster
    address = f"127.0.0.1:{free_port_block(1)}"
    proc = start_chunkserver(cluster, address, two_disks, tmp_path / "cs-two-disks.log")
    try:
        cluster.wait_alive(2)
        files = {f"f{i}": os.urandom(9 * MiB) for i in range(3)}  # 3 chunks each, goal 2: on both servers
        for name, data in files.items():
            (cluster.mnt / name).write_bytes(data)
        assert all(chunk_files(d) for d in two_disks), "both disks hold chunks"
        assert sum(len(chunk_files(d)) for d in two_disks) == 9
        health = json.load(urllib.request.urlopen(f"http://{address}/health", timeout=10))
        assert [d["dir"] for d in health["dirs"]] == [str(d) for d in two_disks]
        assert sum(d["chunks"] for d in health["dirs"]) == 9
        assert sample(address, "chunkfs_chunkserver_dir_chunks") == 9
        assert sample(address, "chunkfs_chunkserver_dir_capacity_bytes") == (48 + 64) * MiB

        cluster.kill("cs1", signal.SIGKILL)  # every read must now come from the two disks
        read_before = sample(address, "chunkfs_chunkserver_read_bytes_total")
        for name, data in files.items():
            path = cluster.mnt / name
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            assert path.read_bytes() == data
        assert sample(address, "chunkfs_chunkserver_read_bytes_total") - read_before >= 9 * MiB

        (cluster.mnt / "f0").unlink()  # its three chunks are deleted from whichever disk holds them
        wait_until(lambda: sum(len(chunk_files(d)) for d in two_disks) == 6, 20, "f0's three chunks deleted from the disks")

        stop_pid(proc.pid)  # restarted with the disks the other way round: it reports all it holds
        proc = start_chunkserver(cluster, address, two_disks[::-1], tmp_path / "cs-two-disks.log")
        cluster.wait_alive(1)
        wait_until(lambda: server_status(cluster, address)["chunks"] == 6, 20,
                   "the restarted chunkserver's inventory (6 chunks) registered")
        for name in ("f1", "f2"):
            assert (cluster.mnt / name).read_bytes() == files[name]
    finally:
        stop_pid(proc.pid, timeout_s=5)
