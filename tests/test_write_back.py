"""The bound on a mount's written-but-not-stored data (`max_dirty_mb`): a big copy keeps the
mount's memory small, and writers of many partly written chunks wait for uploads instead of
filling memory, then read back exactly what they wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import metrics_of

MiB = 1024 * 1024
GiB = 1024 * MiB
RSS_LIMIT_BYTES = 300 * MiB


class ProcessWatch:
    """Samples a process's resident memory every 0.1 s while in the `with` block; its CPU
    seconds (user + system) are read at both ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_bytes = 0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        for _ in range(10_000_000):
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._rss_bytes())
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> ProcessWatch:
        self._cpu_start = self._cpu_s()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.cpu_s = self._cpu_s() - self._cpu_start


def copy_sparse_file(cluster, size_bytes: int, tmp_path: Path) -> None:
    source = tmp_path / "sparse-source"
    with open(source, "wb") as f:
        f.truncate(size_bytes)  # no disk used: reads give zeros at once
    target = cluster.mnt / "copy"
    pid = cluster.pid("mount")
    assert pid is not None
    start = time.monotonic()
    with ProcessWatch(pid) as mount:
        # --sparse=never: every byte is written (a sparse-aware cp would seek over the holes)
        subprocess.run(["cp", "--sparse=never", str(source), str(target)], check=True, timeout=3600)
    elapsed = time.monotonic() - start
    gb = size_bytes / 1e9
    print(f"\ncopied {size_bytes / GiB:.0f} GiB in {elapsed:.1f} s ({size_bytes / MiB / elapsed:.0f} MiB/s); "
          f"mount peak RSS {mount.peak_rss_bytes / MiB:.0f} MiB; mount CPU {mount.cpu_s:.1f} s "
          f"= {mount.cpu_s / gb:.2f} CPU s per GB")
    assert target.stat().st_size == size_bytes
    with open(target, "rb") as f:
        for offset in (0, size_bytes // 2, size_bytes - MiB):
            f.seek(offset)
            assert f.read(MiB) == bytes(MiB)
    assert mount.peak_rss_bytes < RSS_LIMIT_BYTES, f"peak RSS {mount.peak_rss_bytes / MiB:.0f} MiB"


ONE_SERVER = {"chunkservers": 1, "goal": 1}


@pytest.fixture
def big_copy_cluster(fresh_cluster):
    """A one-server cluster whose chunk files are deleted as soon as the test ends (pytest keeps
    the temporary directories of the last runs, and these hold gigabytes)."""
    try:
        yield fresh_cluster
    finally:
        fresh_cluster.cleanup()
        shutil.rmtree(fresh_cluster.dir / "chunkservers", ignore_errors=True)


@pytest.mark.parametrize("fresh_cluster", [ONE_SERVER], indirect=True)
def test_copying_a_2_gib_file_keeps_the_mount_under_300_mib(big_copy_cluster, tmp_path):
    copy_sparse_file(big_copy_cluster, 2 * GiB, tmp_path)


@pytest.mark.long
# the copy's own bound (cp's time-out); the suite's 600 s would need 35 MiB/s, more than a loaded machine gives
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("fresh_cluster", [ONE_SERVER], indirect=True)
def test_copying_a_20_gib_file_keeps_the_mount_under_300_mib(big_copy_cluster, tmp_path):
    copy_sparse_file(big_copy_cluster, 20 * GiB, tmp_path)


def dirty_metric(cluster, name: str) -> float:
    return metrics_of(f"127.0.0.1:{cluster.port + 100}")[name]


@pytest.mark.parametrize("fresh_cluster", [{"mount_options": "retry_s=5,max_dirty_mb=16"}], indirect=True)
def test_writers_of_scattered_partial_chunks_wait_for_uploads(fresh_cluster):
    """8 files, each written 1 MiB at 2 MiB into each of 8 chunks: 3 MiB buffered per chunk,
    192 MiB unbounded; with max_dirty_mb=16 the writers wait while partial chunks are uploaded."""
    cluster = fresh_cluster
    files, chunks = 8, 8
    pieces = {(f, c): os.urandom(MiB) for f in range(files) for c in range(chunks)}
    fds = [os.open(cluster.mnt / f"scattered-{f}", os.O_CREAT | os.O_WRONLY, 0o644) for f in range(files)]
    peak_dirty = 0.0
    try:
        for c in range(chunks):
            for f in range(files):
                os.pwrite(fds[f], pieces[f, c], c * 4 * MiB + 2 * MiB)
            peak_dirty = max(peak_dirty, dirty_metric(cluster, "chunkfs_mount_dirty_bytes"))
    finally:
        for fd in fds:
            os.close(fd)
    assert dirty_metric(cluster, "chunkfs_mount_dirty_waits_total") > 0
    assert peak_dirty <= 16 * MiB + 8 * MiB  # the bound, plus what writers admitted may add
    assert dirty_metric(cluster, "chunkfs_mount_dirty_bytes") == 0
    for f in range(files):
        data = (cluster.mnt / f"scattered-{f}").read_bytes()
        assert len(data) == (chunks - 1) * 4 * MiB + 3 * MiB
        for c in range(chunks):
            at = c * 4 * MiB
            assert data[at : at + 2 * MiB] == bytes(2 * MiB)
            assert data[at + 2 * MiB : at + 3 * MiB] == pieces[f, c]
