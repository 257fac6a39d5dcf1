"""Directory leases: a mount that makes a directory creates files in it and answers lookups of
new names there without asking the metaserver, until another client needs the directory; then
the lease is recalled and the other client sees everything, pending creates included."""

from __future__ import annotations

import errno
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs import mounts
from chunkfs.daemons import unmount
from conftest import OpenFileElsewhere, chunkfs, metaserver_calls, metrics_of, wait_until


def feed_polls(cluster) -> float:
    """Change-feed polls the metaserver answered (a poll in flight at a change is answered by it)."""
    return sum(value for key, value in metrics_of(cluster.metaserver).items()
               if key.startswith("chunkfs_http_requests_total{") and 'route="/v1/changes"' in key)


def test_files_made_in_a_new_directory_cost_one_call_each(cluster):
    folder = cluster.mnt / "fresh"
    folder.mkdir()
    polls = feed_polls(cluster)  # the mount's first feed poll sent after the mkdir renews its leases:
    wait_until(lambda: feed_polls(cluster) >= polls + 2, 10, "two change-feed polls answered after the mkdir")
    before = metaserver_calls(cluster)
    for i in range(30):
        with open(folder / f"f{i}", "xb") as f:
            f.write(b"x" * 100)
    after = metaserver_calls(cluster)
    made = {op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) != before.get(op, 0)}
    # one commit a file, or (write-behind, the default) fewer batches of them
    assert made.get("commit", 0) + made.get("batch", 0) <= 30 and not made.get("lookup") and not made.get("create"), made
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


def test_a_holder_gone_away_delays_others_by_the_lease_and_loses_its_unsynced_creates(fresh_cluster, tmp_path):
    """As the README states: a dead holder's leases are taken back when they run out (another
    client's request waits for that); the files it created there and never fsynced (nor closed
    more than write_behind_s before) are lost with it; an fsync of the file, or of the
    directory, had made them durable."""
    c = fresh_cluster
    holder = tmp_path / "holder"
    chunkfs("mount", c.metaserver, holder, "--secret-file", c.secret_file, "-o", f"cache_dir={tmp_path / 'cache-h'}")
    writers = []
    try:
        for directory in ("held", "synced"):
            (holder / directory).mkdir()
        with open(holder / "held" / "kept", "wb") as kept:
            kept.write(b"closed before the crash")
            kept.flush()
            os.fsync(kept.fileno())
        for path in (holder / "held" / "never-closed", holder / "synced" / "open"):
            writers.append(OpenFileElsewhere(path))
            writers[-1].ask("write written, never closed")
        fd = os.open(holder / "synced", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the creates held for the directory are sent
        finally:
            os.close(fd)
        assert lease_metrics(c) == (2, 0)
        os.kill(mounts.find(holder)["pid"], signal.SIGKILL)
        assert os.listdir(c.mnt / "held") == ["kept"]  # after the lease ran out; never-closed is lost
        assert (c.mnt / "held" / "kept").read_bytes() == b"closed before the crash"
        assert os.listdir(c.mnt / "synced") == ["open"]
        held, recalled = lease_metrics(c)
        assert held == 0 and recalled == 2
        assert metrics_of(c.metaserver)["chunkfs_lease_expirations_total"] == 2, "taken back, not given back"
    finally:
        for writer in writers:
            writer.end()
        unmount(holder)


def test_without_dir_leases_every_create_is_a_call(cluster, tmp_path):
    target = tmp_path / "no-leases"
    chunkfs("mount", cluster.metaserver, target, "--secret-file", cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-n'},dir_leases=false")
    try:
        held, recalls = lease_metrics(cluster)
        (target / "plain").mkdir()
        assert lease_metrics(cluster) == (held, recalls), "no lease for the new directory"
        before = metaserver_calls(cluster)
        for i in range(10):
            (target / "plain" / f"f{i}").write_bytes(b"x" * 100)
        after = metaserver_calls(cluster)
        made = {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}
        assert made.get("create") == 10 and made.get("commit") == 10, made
        assert sorted(os.listdir(cluster.mnt / "plain")) == [f"f{i}" for i in range(10)]
        assert lease_metrics(cluster) == (held, recalls), "nothing to recall"
    finally:
        unmount(target)


def lease_metrics(cluster) -> tuple[float, float]:
    """(leases held, recalls so far) at the metaserver."""
    metrics = metrics_of(cluster.metaserver)
    return metrics["chunkfs_leases_held"], metrics["chunkfs_lease_recalls_total"]


@pytest.mark.timeout(300)
def test_leases_survive_a_metaserver_restart(fresh_cluster, tmp_path):
    """The metaserver keeps leases in LMDB: restarted, it still knows the holder's lease, so
    another client's listing is held until the holder has sent the create it holds, instead of
    missing it. (The holder, told by its feed that the metaserver restarted, gives the lease
    back; it is stopped here until the other client's request has been recalled.)"""
    c = fresh_cluster
    holder = tmp_path / "holder"
    chunkfs("mount", c.metaserver, holder, "--secret-file", c.secret_file, "-o", f"cache_dir={tmp_path / 'cache-h'}")
    pid = mounts.find(holder)["pid"]
    stopped, writer = False, None
    try:
        (holder / "before").mkdir()
        writer = OpenFileElsewhere(holder / "before" / "pending")
        writer.ask("write written across the restart")  # the create is still held, under the lease
        assert lease_metrics(c) == (1, 0)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        c.kill("metaserver")
        c.up()  # starts what is not running
        assert lease_metrics(c) == (1, 0), "the restarted metaserver knows the lease"
        with ThreadPoolExecutor(1) as pool:
            listing = pool.submit(os.listdir, c.mnt / "before")
            wait_until(lambda: lease_metrics(c)[1] == 1, 10, "the lease recalled for the other client's listing")
            assert not listing.done(), "the listing waits for the holder"
            os.kill(pid, signal.SIGCONT)
            stopped = False
            assert listing.result(timeout=30) == ["pending"]
        writer.ask("write !")
        writer.ask("close")
        assert (c.mnt / "before" / "pending").read_bytes() == b"written across the restart!"
        assert lease_metrics(c) == (0, 1)
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        if writer is not None:
            writer.end()
        unmount(holder)
