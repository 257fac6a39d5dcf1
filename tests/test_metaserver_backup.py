"""Metaserver backup, restore and a standby: what an operator does when the metaserver's disk is
lost, run against real daemons and a real mount."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import lmdb
import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.daemons import module_command, read_pid, spawn, stop_pid
from conftest import chunkfs, free_port_block, wait_until

MiB = 1024 * 1024


def drop_caches() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)


def write_files(root: Path, prefix: str, count: int) -> dict[str, str]:
    """Files of a few sizes (empty, small, several chunks); their sha256 by name."""
    sizes = [0, 1, 4096, CHUNK_SIZE + 17, 2 * CHUNK_SIZE + 5]
    digests = {}
    for i in range(count):
        data = os.urandom(sizes[i % len(sizes)])
        (root / f"{prefix}{i}").write_bytes(data)
        digests[f"{prefix}{i}"] = hashlib.sha256(data).hexdigest()
    return digests


def check_files(root: Path, digests: dict[str, str]) -> None:
    for name, digest in digests.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def chunk_files(cluster) -> int:
    return sum(1 for p in (cluster.dir / "chunkservers").rglob("*") if p.suffix == ".chunk")


def restore(cluster, database: Path) -> None:
    """As the README says: stop the cluster (the mount too: its kernel may cache names the backup
    does not have), put `database` in place of the metaserver's LMDB, start the cluster."""
    cluster.down()
    meta = cluster.dir / "meta"
    shutil.rmtree(meta, ignore_errors=True)
    chunkfs("restore", database, meta)
    cluster.up()


def test_a_restored_backup_serves_its_files_and_keeps_newer_chunks(fresh_cluster, tmp_path):
    c = fresh_cluster
    (c.mnt / "dir").mkdir()
    before = write_files(c.mnt / "dir", "before", 6)
    os.symlink("dir/before1", c.mnt / "link")
    copy = tmp_path / "meta.mdb"
    result = json.loads(chunkfs("backup", copy, "--dir", c.dir, "--json").stdout)
    assert result["size_bytes"] == copy.stat().st_size > 0
    after = write_files(c.mnt, "after", 5)
    held = chunk_files(c)

    restore(c, copy)
    drop_caches()
    check_files(c.mnt / "dir", before)
    assert os.readlink(c.mnt / "link") == "dir/before1"
    assert not any((c.mnt / name).exists() for name in after)
    # the files written after the backup are unknown now, but their chunks are kept (quarantine),
    # even when a garbage collection is asked for
    report = json.loads(chunkfs("gc", "--min-age-s", "0", "--wait", "30", "--dir", c.dir, "--json").stdout)
    assert report["versions"] == 0 and report["pending_deletions"] == 0, report  # none queued, queue empty
    assert chunk_files(c) == held
    # new files get ids the old chunk files do not have
    fresh = write_files(c.mnt, "fresh", 5)
    drop_caches()
    check_files(c.mnt, fresh)
    check_files(c.mnt / "dir", before)
    assert chunk_files(c) > held


def test_a_backup_streams_to_stdout_staging_nothing_and_restores(cluster, tmp_path):
    (cluster.mnt / "streamed").write_bytes(b"x" * 100)
    meta = cluster.dir / "meta"
    before = sorted(p.name for p in meta.iterdir())
    with open(tmp_path / "copy.zst", "wb") as out:
        subprocess.run([*module_command("chunkfs.cli"), "backup", "-", "--dir", str(cluster.dir)], stdout=out,
                       check=True, timeout=120)
    assert sorted(p.name for p in meta.iterdir()) == before  # nothing staged beside the database
    assert (tmp_path / "copy.zst").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    result = subprocess.run([*module_command("chunkfs.cli"), "restore", "-", str(tmp_path / "restored")],
                            stdin=open(tmp_path / "copy.zst", "rb"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    env = lmdb.open(str(tmp_path / "restored"), max_dbs=16, readonly=True)
    with env.begin(db=env.open_db(b"counters", create=False)) as txn:
        assert txn.get(b"copied_at_ns") is not None  # marked: a metaserver starting on it knows it is a copy
        assert int.from_bytes(txn.get(b"count.files"), "big") >= 1
    env.close()
    assert chunkfs("restore", tmp_path / "copy.zst", meta, check=False).returncode == 1  # in use: refused


def test_backup_needs_the_secret_and_a_writable_destination(fresh_cluster, tmp_path):
    c = fresh_cluster
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("x" * 40)
    result = chunkfs("backup", tmp_path / "a.mdb", "--metaserver", c.metaserver, "--secret-file", wrong, check=False)
    assert result.returncode == 1 and "refused the cluster secret" in result.stderr
    assert not list(tmp_path.glob("a.mdb*"))
    result = chunkfs("backup", tmp_path / "no" / "such" / "dir.mdb", "--dir", c.dir, check=False)
    assert result.returncode == 1 and "no such directory" in result.stderr


class Standby:
    """`chunkfs-metaserver --follow` of a cluster's metaserver, stopped by its fixture."""

    def __init__(self, cluster, root: Path) -> None:
        self.cluster = cluster
        self.data_dir = root / "standby"
        self.log = root / "standby.log"
        self.address = f"127.0.0.1:{free_port_block(1)}"
        self.pid_file = root / "standby.pid"

    def start(self) -> None:
        spawn(module_command("chunkfs.metaserver.main", "--follow", self.cluster.metaserver, "--listen", self.address,
                             "--data-dir", str(self.data_dir), "--secret-file", str(self.cluster.secret_file)),
              self.log, self.pid_file)

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as response:
            return json.loads(response.read())

    def wait_in_sync(self, timeout_s: float = 30) -> None:
        wait_until(lambda: any(s["in_sync"] for s in self.cluster.status()["standbys"]), timeout_s,
                   f"the standby in sync (its log: {self.log})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            if sig == signal.SIGKILL:
                os.kill(pid, sig)
            stop_pid(pid, timeout_s=10)


@pytest.fixture
def standby(fresh_cluster, tmp_path):
    s = Standby(fresh_cluster, tmp_path)
    try:
        s.start()
        s.wait_in_sync()
        yield s
    finally:
        s.stop()


def test_a_promoted_standby_has_every_acknowledged_file(fresh_cluster, standby):
    c = fresh_cluster
    (c.mnt / "dir").mkdir()
    files = write_files(c.mnt / "dir", "f", 10)
    os.rename(c.mnt / "dir" / "f0", c.mnt / "dir" / "renamed")
    files["renamed"] = files.pop("f0")
    os.unlink(c.mnt / "dir" / "f1")
    del files["f1"]
    os.setxattr(c.mnt / "dir" / "f2", "user.note", b"kept")
    # the metaserver and its disk are lost; the standby takes its place
    c.kill("metaserver", signal.SIGKILL)
    shutil.rmtree(c.dir / "meta")
    standby.stop()
    shutil.move(standby.data_dir, c.dir / "meta")
    c.up()
    drop_caches()
    check_files(c.mnt / "dir", files)
    assert sorted(os.listdir(c.mnt / "dir")) == sorted(files)
    assert os.getxattr(c.mnt / "dir" / "f2", "user.note") == b"kept"
    (c.mnt / "dir" / "new").write_bytes(b"after the promotion")
    assert (c.mnt / "dir" / "new").read_bytes() == b"after the promotion"


def test_writes_go_on_when_a_synchronous_standby_dies(fresh_cluster, standby):
    c = fresh_cluster
    standby.stop(signal.SIGKILL)
    (c.mnt / "while-alone").write_bytes(b"x" * 1000)  # one wait of standby_timeout_s (5 s), then without it
    timed_out = lambda: (c.dir / "logs" / "metaserver.log").read_text().count("did not confirm")
    assert timed_out() == 1
    (c.mnt / "next").write_bytes(b"y")
    assert timed_out() == 1  # out of sync: the next writes are not held for it
    # it comes back: it catches up from where it was, then it is in sync again
    standby.start()
    standby.wait_in_sync()
    health = standby.health()
    assert health["copies_taken"] == 0 and health["applied_seq"] == health["primary_seq"]
    assert "in sync" in chunkfs("status", "--dir", c.dir).stdout
