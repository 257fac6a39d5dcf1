"""Directory leases: a mount that makes a directory creates files in it and answers lookups of
new names there without asking the metaserver, until another client needs the directory; then
the lease is recalled and the other client sees everything, pending creates included."""

from __future__ import annotations

import errno
import os
import time

import pytest

from chunkfs.daemons import unmount
from conftest import chunkfs, metaserver_calls


def test_files_made_in_a_new_directory_cost_one_call_each(cluster):
    folder = cluster.mnt / "fresh"
    folder.mkdir()
    time.sleep(0.5)  # the mount's first feed poll since the mkdir renews its leases
    before = metaserver_calls(cluster)
    for i in range(30):
        with open(folder / f"f{i}", "xb") as f:
            f.write(b"x" * 100)
    after = metaserver_calls(cluster)
    made = {op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) != before.get(op, 0)}
    assert made.get("commit") == 30 and not made.get("lookup") and not made.get("create"), made
    assert sorted(os.listdir(folder)) == sorted(f"f{i}" for i in range(30))
    with pytest.raises(FileExistsError):
        open(folder / "f3", "xb")


def test_another_client_sees_pending_creates_and_its_own_changes_reach_the_holder(cluster, second_mount):
    a, b = cluster.mnt / "shared-dir", second_mount / "shared-dir"
    a.mkdir()
    (a / "closed").write_bytes(b"closed")
    writer = open(a / "open", "wb")  # created under the lease, not sent yet
    try:
        writer.write(b"partial")
        writer.flush()
        assert sorted(os.listdir(b)) == ["closed", "open"]  # the recall sent the pending create
        assert (b / "closed").read_bytes() == b"closed"
        with pytest.raises(FileExistsError):  # O_EXCL holds between clients
            open(b / "open", "xb")
        (b / "from-b").write_bytes(b"b's")
    finally:
        writer.close()
    assert (a / "from-b").read_bytes() == b"b's"  # no lease any more: a asks the metaserver
    assert (b / "open").read_bytes() == b"partial"
    assert sorted(os.listdir(a)) == ["closed", "from-b", "open"]


def test_exclusive_create_between_clients_in_a_leased_directory(cluster, second_mount):
    a, b = cluster.mnt / "race", second_mount / "race"
    a.mkdir()
    fd = os.open(a / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(OSError) as failure:
            os.open(b / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        assert failure.value.errno == errno.EEXIST
    finally:
        os.close(fd)


def test_a_holder_gone_away_delays_others_by_at_most_the_lease(fresh_cluster, tmp_path):
    holder = tmp_path / "holder"
    chunkfs("mount", fresh_cluster.metaserver, holder, "--secret-file", fresh_cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-h'}")
    try:
        (holder / "held").mkdir()
        (holder / "held" / "kept").write_bytes(b"closed before the crash")
        pid = next(p for p in os.listdir("/proc") if p.isdigit() and _is_mount_of(p, holder))
        os.kill(int(pid), 9)
        started = time.monotonic()
        assert os.listdir(fresh_cluster.mnt / "held") == ["kept"]
        assert time.monotonic() - started < 15
        assert (fresh_cluster.mnt / "held" / "kept").read_bytes() == b"closed before the crash"
    finally:
        unmount(holder)


def _is_mount_of(pid: str, mountpoint) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"chunkfs.mount.main" in args and str(mountpoint).encode() in args


def test_leases_survive_a_metaserver_restart(fresh_cluster, tmp_path):
    c = fresh_cluster
    (c.mnt / "before").mkdir()
    with open(c.mnt / "before" / "pending", "wb") as f:
        f.write(b"written across the restart")
        c.kill("metaserver")
        c.up()  # starts what is not running
        f.write(b"!")
    other = tmp_path / "other"
    chunkfs("mount", c.metaserver, other, "--secret-file", c.secret_file, "-o", f"cache_dir={tmp_path / 'cache-o'}")
    try:
        assert (other / "before" / "pending").read_bytes() == b"written across the restart!"
    finally:
        unmount(other)
