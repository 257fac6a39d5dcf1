"""The mount's chunk cache on local disk: it survives a remount and serves reads while every
chunkserver is down, it never serves a version older than the metaserver names at open, a
damaged cache file is fetched again, and `chunkfs status` shows each mount's cache figures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs import INLINE_MAX_BYTES
from chunkfs.daemons import unmount
from conftest import chunkfs, metrics_of, wait_until

MiB = 1024 * 1024


def cached_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "chunks").glob("*/*") if not p.name.endswith(".tmp"))


def wait_exited(pid: int | None, timeout_s: float = 15) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    if pid is not None:
        wait_until(gone, timeout_s, f"mount daemon {pid} exits")


def remount(cluster) -> None:
    """Unmount the cluster's mount and mount it again: memory and page cache start empty."""
    pid = cluster.pid("mount")
    unmount(cluster.mnt)
    wait_exited(pid)
    cluster.up()


def metric(cluster, name: str) -> float:
    return metrics_of(f"127.0.0.1:{cluster.port + 100}")[name]


def test_remounted_client_reads_from_its_disk_cache_with_every_chunkserver_down(fresh_cluster):
    cluster = fresh_cluster
    cache_dir = cluster.dir / "cache"
    big, small, tiny = os.urandom(9 * MiB + 5), os.urandom(INLINE_MAX_BYTES + 5), b"tiny file\n"
    (cluster.mnt / "big").write_bytes(big)
    (cluster.mnt / "small").write_bytes(small)
    (cluster.mnt / "tiny").write_bytes(tiny)  # kept inline by the metaserver: no chunk, nothing cached
    assert cached_files(cache_dir) == []  # written chunks are not copied to the local disk

    remount(cluster)
    assert (cluster.mnt / "big").read_bytes() == big  # fetched, and stored on disk in the background
    assert (cluster.mnt / "small").read_bytes() == small
    wait_until(lambda: len(cached_files(cache_dir)) == 4, 10, "4 chunks in the disk cache")
    assert metric(cluster, "chunkfs_mount_cache_misses_total") == 4

    remount(cluster)
    for name in ("cs1", "cs2", "cs3"):
        cluster.kill(name)
    assert (cluster.mnt / "big").read_bytes() == big
    assert (cluster.mnt / "small").read_bytes() == small
    assert (cluster.mnt / "tiny").read_bytes() == tiny
    assert metric(cluster, "chunkfs_mount_disk_cache_hits_total") == 4
    assert metric(cluster, "chunkfs_mount_cache_misses_total") == 0
    assert metric(cluster, "chunkfs_mount_disk_cache_size_bytes") == len(big) + len(small)

    # the figures reach `chunkfs status` on the mount's next change-feed poll, which another
    # client's change (here the CLI's) starts at once
    chunkfs("goal", cluster.mnt / "small", "2", "--dir", cluster.dir)

    def reported() -> dict | None:
        clients = [c for c in cluster.status()["clients"] if c["mountpoint"] == str(cluster.mnt)]
        return next((c for c in clients if c["cache"]["disk_hits"] == 4), None)
    wait_until(reported, 10, "the disk hits in chunkfs status")
    assert reported()["cache"]["disk_bytes"] == len(big) + len(small)
    assert "disk" in chunkfs("status", "--dir", cluster.dir).stdout


@pytest.fixture
def other_client(cluster, tmp_path):
    """A second mount of the shared cluster, with its own disk cache; `remount()` starts it again."""
    target, cache_dir = tmp_path / "client-b", tmp_path / "cache-b"

    class Client:
        mnt, cache = target, cache_dir

        def mount(self) -> None:
            chunkfs("mount", cluster.metaserver, target, "--secret-file", cluster.secret_file,
                    "-o", f"cache_dir={cache_dir},retry_s=5")

        def unmount(self) -> None:
            unmount(target)
            wait_until(lambda: not _holds_lock(cache_dir), 15, "the old mount lets go of its cache")

    client = Client()
    client.mount()
    try:
        yield client
    finally:
        unmount(target)


def _holds_lock(cache_dir: Path) -> bool:
    import fcntl
    with open(cache_dir / "lock", "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_a_file_changed_by_another_client_is_never_served_from_a_stale_cache(cluster, other_client):
    a, b = cluster.mnt / "cached-elsewhere", other_client.mnt / "cached-elsewhere"
    first = os.urandom(6 * MiB)
    a.write_bytes(first)
    assert b.read_bytes() == first
    wait_until(lambda: len(cached_files(other_client.cache)) == 2, 10, "b caches both chunks")

    other_client.unmount()  # b's disk cache keeps the first version...
    second = bytearray(first)
    second[5 * MiB] ^= 0xFF
    fd = os.open(a, os.O_WRONLY)
    try:
        os.pwrite(fd, second[5 * MiB : 5 * MiB + 1], 5 * MiB)  # ...while a writes a new version of chunk 1
    finally:
        os.close(fd)
    old_names = {p.name for p in cached_files(other_client.cache)}
    other_client.mount()
    assert b.read_bytes() == bytes(second)

    def old_version_replaced() -> bool:
        names = {p.name for p in cached_files(other_client.cache)}
        return len(names) == 2 and len(names & old_names) == 1
    wait_until(old_version_replaced, 10, "chunk 1's old version replaced by the new one")

    # a damaged cache file fails its checksum: it is fetched again, never returned
    other_client.unmount()
    victim = cached_files(other_client.cache)[0]
    damaged = bytearray(victim.read_bytes())
    damaged[100] ^= 1
    victim.write_bytes(bytes(damaged))
    other_client.mount()
    assert b.read_bytes() == bytes(second)


def test_a_cache_directory_serves_one_mount_at_a_time(cluster, other_client, tmp_path):
    third = tmp_path / "client-c"
    third.mkdir()
    result = chunkfs("mount", cluster.metaserver, third, "--secret-file", cluster.secret_file,
                     "-o", f"cache_dir={other_client.cache}", check=False, timeout=60)
    assert result.returncode != 0
    assert "cache of another running mount" in result.stderr + result.stdout
    assert not os.path.ismount(third)
