"""Two mounts of one cluster: close-to-open, and changes pushed to the other client even though
each kernel caches names and attributes for a minute."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from chunkfs import auth
from chunkfs.daemons import unmount
from conftest import chunkfs, wait_until
from feed_gate import FeedGate

MiB = 1024 * 1024


def eventually(check, what: str) -> None:
    """A pushed change shows on the other client: within milliseconds when the machine is quiet;
    the wait allows for a loaded one (how fast it is belongs to benchmarks, not tests)."""
    wait_until(check, 10, what, poll_s=0.02)


def test_changes_on_one_client_show_on_the_other_within_a_second(cluster, second_mount):
    a, b = cluster.mnt / "shared", second_mount / "shared"
    a.mkdir()
    (a / "f").write_text("first")
    eventually(lambda: (b / "f").exists(), "b sees the new file f")
    assert (b / "f").read_text() == "first"
    os.listdir(b)
    os.stat(b / "f")  # now cached in b's kernel

    (a / "f").write_text("second, longer")
    eventually(lambda: os.stat(b / "f").st_size == len("second, longer"), "b sees f's new size")
    assert (b / "f").read_text() == "second, longer"  # close-to-open: never the old bytes

    (a / "g").write_text("new")
    eventually(lambda: "g" in os.listdir(b), "b lists the new file g")
    os.rename(a / "g", a / "h")
    eventually(lambda: sorted(os.listdir(b)) == ["f", "h"], "b lists g renamed to h")
    os.unlink(a / "h")
    eventually(lambda: not (b / "h").exists(), "h unlinked on a is gone on b")
    os.chmod(a / "f", 0o600)
    eventually(lambda: os.stat(b / "f").st_mode & 0o777 == 0o600, "b sees the chmod")


def test_xattrs_set_and_removed_on_one_client_show_on_the_other(cluster, second_mount):
    """An xattr change is pushed as any other: the other mount answers "no such attribute" from
    what it knows of a file, so it must hear of it (an ACL is one: test_acl.py)."""
    a, b = cluster.mnt / "tagged", second_mount / "tagged"
    a.write_bytes(b"x")
    eventually(lambda: b.exists(), "b sees the file")

    def value_on_b() -> bytes | None:
        try:
            return os.getxattr(b, "user.tag")
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            return None

    assert value_on_b() is None  # b now knows the file has no xattrs
    os.setxattr(a, "user.tag", b"one")
    eventually(lambda: value_on_b() == b"one", "b sees the xattr set on a")
    os.removexattr(a, "user.tag")
    eventually(lambda: value_on_b() is None, "b sees the xattr removed on a")


def test_an_xattr_change_changes_ctime_here_and_on_the_other(cluster, second_mount):
    """POSIX: setting or removing an extended attribute changes the file's ctime (not its mtime),
    as a chmod does: at once on this client (closed, open, and just created here in a directory
    it leases), and on the other client once pushed."""
    a, b = cluster.mnt / "ctime-tagged", second_mount / "ctime-tagged"
    a.write_bytes(b"x")
    eventually(lambda: b.exists(), "b sees the file")

    def changes_ctime(stat_it, change) -> int:
        before = stat_it()
        change()
        after = stat_it()
        assert after.st_ctime_ns > before.st_ctime_ns, change
        assert after.st_mtime_ns == before.st_mtime_ns, change
        return after.st_ctime_ns

    for change in (lambda: os.setxattr(a, "user.tag", b"one"), lambda: os.removexattr(a, "user.tag")):
        os.stat(b)  # b's kernel caches the file's attributes
        ctime_ns = changes_ctime(lambda: os.stat(a), change)
        eventually(lambda ctime_ns=ctime_ns: os.stat(b).st_ctime_ns == ctime_ns, "b sees the new ctime")
    with open(a, "r+b") as f:
        f.write(b"y")  # not committed yet: the attributes are this client's
        changes_ctime(lambda: os.fstat(f.fileno()), lambda: os.setxattr(f.fileno(), "user.open", b"1"))
        changes_ctime(lambda: os.fstat(f.fileno()), lambda: os.removexattr(f.fileno(), "user.open"))
    (cluster.mnt / "ctime-leased").mkdir()
    with open(cluster.mnt / "ctime-leased" / "new", "wb") as f:  # created here, not sent yet
        changes_ctime(lambda: os.fstat(f.fileno()), lambda: os.setxattr(f.fileno(), "user.new", b"1"))
        changes_ctime(lambda: os.fstat(f.fileno()), lambda: os.removexattr(f.fileno(), "user.new"))


def test_big_file_rewritten_elsewhere_is_read_whole(cluster, second_mount):
    a, b = cluster.mnt / "big-shared", second_mount / "big-shared"
    first = os.urandom(9 * 1024 * 1024)
    a.write_bytes(first)
    eventually(lambda: b.exists() and b.stat().st_size == len(first), "b sees the big file")
    assert b.read_bytes() == first
    second = os.urandom(9 * 1024 * 1024)
    a.write_bytes(second)
    eventually(lambda: b.stat().st_mtime_ns == a.stat().st_mtime_ns, "b sees the rewrite's mtime")
    assert b.read_bytes() == second


@pytest.fixture
def unpushed_mount(cluster, tmp_path):
    """A second mount whose change feed the test can hold back (`gate.closed()`)."""
    gate = FeedGate(cluster.metaserver, auth.load_secret(cluster.secret_file)).start()
    target = tmp_path / "client-c"
    try:
        chunkfs("mount", gate.address, target, "--secret-file", cluster.secret_file,
                "-o", f"cache_dir={tmp_path / 'cache-c'}")
        try:
            yield target, gate
        finally:
            unmount(target)
    finally:
        gate.stop()


@pytest.mark.parametrize("size", [3 * MiB, 9 * MiB + 7], ids=["same size", "longer"])
def test_close_to_open_without_the_push(cluster, unpushed_mount, size):
    """A client with the file in its page cache and chunk cache, told nothing by the change
    feed, still reads the whole new content after the writer's close: the open asks."""
    target, gate = unpushed_mount
    a, c = cluster.mnt / f"c2o-{size}", target / f"c2o-{size}"
    first = os.urandom(3 * MiB)
    a.write_bytes(first)
    assert c.read_bytes() == first  # warm: pages, chunks, the kernel's attributes
    os.stat(c)
    with gate.closed():
        answered = gate.feed_answers
        second = os.urandom(size)
        a.write_bytes(second)
        assert c.read_bytes() == second
        assert os.stat(c).st_size == size
        assert gate.feed_answers == answered, "nothing was pushed meanwhile"


@pytest.mark.parametrize("known_by", ["a stat", "a lookup after the kernel forgot it"])
def test_close_to_open_without_the_push_when_the_kernel_holds_only_attributes(cluster, unpushed_mount, known_by):
    """The reader's kernel holds the file's old attributes but no pages: from a stat of a file
    this mount never opened, or from a lookup the mount answers from its cache after the kernel
    forgot the inode (memory pressure; here drop_caches). The open finds the new version and
    makes the kernel ask for the size again, or its reads would end at the old size: the new
    first bytes, not all of them."""
    target, gate = unpushed_mount
    name = f"c2o-attributes-{known_by.split()[1]}"
    a, c = cluster.mnt / name, target / name
    first = os.urandom(3 * MiB)
    a.write_bytes(first)
    if known_by == "a lookup after the kernel forgot it":
        assert c.read_bytes() == first
        Path("/proc/sys/vm/drop_caches").write_text("2")  # unused dentries and inodes go: FORGET
    assert os.stat(c).st_size == len(first)  # c's kernel caches it for a minute
    with gate.closed():
        answered = gate.feed_answers
        second = os.urandom(9 * MiB + 7)
        a.write_bytes(second)
        got = c.read_bytes()
        assert (len(got), got == second) == (len(second), True)
        assert gate.feed_answers == answered, "nothing was pushed meanwhile"
