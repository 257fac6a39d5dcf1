"""Metadata write-behind (README, Durability): in directories a mount holds the lease on, small
files' closes, unlinks, rmdirs, renames and chmods are answered by the mount and sent in ordered
batches; another client sees all of them, in order, once it looks (the recall sends them first);
fsync'ed changes survive a metaserver SIGKILL, and so does every change a mount answered (it
sends the batch again to the restarted metaserver)."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.daemons import answers_health
from conftest import _cluster, another_mount, chunkfs, fsync_directory, metaserver_calls, wait_until

WRITE_BEHIND = "retry_s=5,write_behind_s=1"  # the default bound, said here so the tests keep it if the default moves


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The module's shared cluster, its mount with write-behind on."""
    yield from _cluster(tmp_path_factory, mount_options=WRITE_BEHIND)


def calls_made(cluster, action) -> dict[str, float]:
    """The metaserver calls `action()` made, by operation."""
    before = metaserver_calls(cluster)
    action()
    after = metaserver_calls(cluster)
    return {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}


def test_changes_in_a_leased_directory_go_in_batches(cluster):
    folder = cluster.mnt / "batched"
    folder.mkdir()

    def work() -> None:
        for i in range(40):
            (folder / f"f{i}").write_bytes(b"%d" % i)
        for i in range(10):
            os.unlink(folder / f"f{i}")
        for i in range(10, 15):
            os.rename(folder / f"f{i}", folder / f"g{i}")
        for i in range(15, 20):
            os.chmod(folder / f"f{i}", 0o600)
        (folder / "sub").mkdir()
        (folder / "sub" / "inner").write_bytes(b"inner")
        os.unlink(folder / "sub" / "inner")
        os.rmdir(folder / "sub")
        fsync_directory(folder)  # a durability point: everything queued is sent

    made = calls_made(cluster, work)
    assert not any(made.get(op) for op in ("commit", "rename", "setattr")), made
    assert made.get("remove", 0) <= 1, made  # the rmdir: the metaserver answers those
    assert 1 <= made.get("batch", 0) < 30, made  # 64 changes, a batch within each second at most
    expected = sorted([f"f{i}" for i in range(15, 40)] + [f"g{i}" for i in range(10, 15)])
    assert sorted(os.listdir(folder)) == expected
    assert (folder / "g12").read_bytes() == b"12"
    assert stat.S_IMODE(os.stat(folder / "f16").st_mode) == 0o600


def test_without_write_behind_each_close_is_a_call(cluster, tmp_path):
    with another_mount(cluster, tmp_path / "sync-close", "write_behind_s=0") as target:
        (target / "each").mkdir()
        made = calls_made(cluster, lambda: [(target / "each" / f"f{i}").write_bytes(b"x") for i in range(10)])
        assert made.get("commit") == 10 and not made.get("batch"), made


def test_another_client_sees_the_changes_in_order_after_the_recall(cluster, second_mount):
    a, b = cluster.mnt / "behind-shared", second_mount / "behind-shared"
    a.mkdir()
    for i in range(10):
        (a / f"f{i}").write_bytes(b"first %d" % i)
    os.unlink(a / "f0")
    (a / "f0").write_bytes(b"made again")  # the same name, after its unlink: order matters
    os.rename(a / "f1", a / "moved")
    os.rename(a / "f2", a / "f3")  # over another file made here
    os.chmod(a / "f4", 0o640)
    # b names the directory: the lease is recalled, and a sends what it queued first
    assert sorted(os.listdir(b)) == sorted(["f0", "moved", "f3", *(f"f{i}" for i in range(4, 10))])
    assert (b / "f0").read_bytes() == b"made again"
    assert (b / "moved").read_bytes() == b"first 1"
    assert (b / "f3").read_bytes() == b"first 2"
    assert stat.S_IMODE(os.stat(b / "f4").st_mode) == 0o640
    # no lease any more: a's changes now go to the metaserver at once, and b is told
    os.unlink(a / "f5")
    wait_until(lambda: not (b / "f5").exists(), 10, "b sees the unlink made after the recall")


NAMES = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), NAMES, st.binary(max_size=64)),
    st.tuples(st.just("unlink"), NAMES),
    st.tuples(st.just("rename"), NAMES, NAMES),
    st.tuples(st.just("chmod"), NAMES, st.sampled_from([0o600, 0o644, 0o755])),
), max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_batch_leaves_what_a_local_filesystem_would(cluster, second_mount, ops):
    """A model test: random changes in a new (leased) directory, answered by the mount and
    batched, leave the same names, contents and modes as a dict model says, seen by the mount
    itself and by another client after the recall."""
    directory = f"model-{os.urandom(4).hex()}"
    a = cluster.mnt / directory
    a.mkdir()
    model: dict[str, tuple[bytes, int]] = {}
    for op, name, *rest in ops:
        if op == "write":
            (a / name).write_bytes(rest[0])
            model[name] = (rest[0], stat.S_IMODE(os.stat(a / name).st_mode))
        elif op == "unlink" and name in model:
            os.unlink(a / name)
            del model[name]
        elif op == "rename" and name in model:
            os.rename(a / name, a / rest[0])
            model[rest[0]] = model.pop(name)
        elif op == "chmod" and name in model:
            os.chmod(a / name, rest[0])
            model[name] = (model[name][0], rest[0])
    for root in (a, second_mount / directory):
        assert sorted(os.listdir(root)) == sorted(model), (root, ops)
        for name, (content, mode) in model.items():
            assert (root / name).read_bytes() == content, (root, name, ops)
            assert stat.S_IMODE(os.stat(root / name).st_mode) == mode, (root, name, ops)


@pytest.mark.parametrize("fresh_cluster", [{"mount_options": "retry_s=60,write_behind_s=1"}], indirect=True)
@pytest.mark.timeout(300)
def test_a_metaserver_sigkill_loses_nothing_a_client_was_told(fresh_cluster, tmp_path):
    """Files whose close (or fsync) returned on a mount that stays up are all there after the
    metaserver was killed (SIGKILL) in the middle of the copy and started again: the mount sends
    what it answered itself again, the fsync'ed ones were durable already. (An fsync or close
    that waits for the metaserver longer than retry_s fails with EIO: that file is not counted.)"""
    c = fresh_cluster
    (c.mnt / "copy").mkdir()
    closed: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def copy() -> None:
        i = 0
        while not stop.is_set():
            path = c.mnt / "copy" / f"f{i:05d}"
            i += 1
            try:
                with open(path, "wb") as f:
                    f.write(b"%d" % (i - 1) * 100)
                    if i % 10 == 1:
                        os.fsync(f.fileno())
            except OSError as exc:
                errors.append(exc)
                continue
            closed.append(path.name)

    writer = threading.Thread(target=copy)
    writer.start()
    try:
        wait_until(lambda: len(closed) >= 50, 60, "the copy under way")
        told = len(closed)
        started = time.monotonic()
        c.kill("metaserver", signal.SIGKILL)
        killed_s = time.monotonic() - started
        chunkfs("up", "--dir", c.dir, "--mount", c.mnt, "--port", c.port, "-o", c.mount_options, "--no-gateway")
        wait_until(lambda: answers_health(f"http://{c.metaserver}/health"), 60, "the metaserver back")
        print(f"killed after {killed_s:.1f} s, back after {time.monotonic() - started:.1f} s; "
              f"{len(closed) - told} files closed meanwhile")
        wait_until(lambda: len(closed) >= told + 50, 180, "the copy going on")
    finally:
        stop.set()
        writer.join(180)
    print(f"{len(closed)} files closed, {len(errors)} closes failed: {errors[:3]}")
    fsync_directory(c.mnt / "copy")
    with another_mount(c, tmp_path / "other") as other:
        listed = set(os.listdir(other / "copy"))
        missing = [name for name in closed if name not in listed]
        assert not missing, f"{len(missing)} of {len(closed)} closed files lost: {missing[:10]}"
        for name in closed[:: max(1, len(closed) // 50)]:
            i = int(name[1:])
            assert (other / "copy" / name).read_bytes() == b"%d" % i * 100


def test_another_mount_sees_the_times_this_one_answered(cluster, tmp_path):
    """Changes answered here carry the time they were answered at, and the metaserver stamps them
    so (change_clock.py): a directory's mtime/ctime and a file's ctime agree between the mount
    that made the changes and another one, also where that one reads the directory's attributes
    without naming it (its lookup in the parent recalls the lease first)."""
    a = cluster.mnt / "times"
    a.mkdir()
    (a / "sub").mkdir()
    (a / "file").write_bytes(b"data")
    (a / "gone").write_bytes(b"x")
    (a / "old").write_bytes(b"y")
    os.chmod(a / "file", 0o640)
    os.rename(a / "old", a / "sub" / "moved")
    os.unlink(a / "gone")

    def fields(path):
        st = os.stat(path)
        return st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    here = {name: fields(a / name) for name in (".", "sub", "file", "sub/moved")}
    with another_mount(cluster, tmp_path / "other") as other:
        b = other / "times"
        for name, answered in here.items():
            assert fields(b / name) == answered, name
