"""Small files: kept inline by the metaserver (one commit, no chunk upload), moved into chunks
when they grow and back inline when rewritten small; the mode, owner and times that cp -a and
tar set on a file they just created go with its close commit, so copying a file costs three
metaserver calls (the kernel's lookup of the new name, create, commit).

How inline files grow into chunks and back is tested through the Python API, in
test_client_api.py (no FUSE needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chunkfs.daemons import unmount
from conftest import chunkfs, drop_caches, metaserver_calls, wait_until
from user_scenario import GROUP, PYTHON, USER

MiB = 1024 * 1024


def info(cluster, path: Path) -> dict:
    return json.loads(chunkfs("info", path, "--dir", cluster.dir, "--json").stdout)


def test_a_small_file_reads_with_every_chunkserver_down(fresh_cluster):
    (fresh_cluster.mnt / "note").write_bytes(b"kept by the metaserver\n")
    assert info(fresh_cluster, fresh_cluster.mnt / "note")["chunks"] == []
    for name in ("cs1", "cs2", "cs3"):
        fresh_cluster.kill(name)
    drop_caches(fresh_cluster)  # nothing cached here: the bytes must come with the open
    before = metaserver_calls(fresh_cluster)
    assert (fresh_cluster.mnt / "note").read_bytes() == b"kept by the metaserver\n"
    # one open call at most: none while the open lease's layout (with the bytes) is still held
    assert metaserver_calls(fresh_cluster).get("open", 0) <= before.get("open", 0) + 1


def test_cp_a_costs_three_metaserver_calls_a_file_and_keeps_everything(cluster, tmp_path):
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    files = 40
    for i in range(files):
        f = source / "sub" / f"f{i}"
        f.write_bytes(os.urandom(i * 100))
        os.chmod(f, [0o600, 0o640, 0o755, 0o4755][i % 4])
        os.utime(f, ns=(1_000_000_000 * i, 1_500_000_000_123_456_789 + i))
        os.chown(f, 1000 + i % 3, 2000 + i % 2)
    before = metaserver_calls(cluster)
    subprocess.run(["cp", "-a", str(source), str(cluster.mnt / "copy")], check=True)
    after = metaserver_calls(cluster)
    per_op = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    assert per_op.get("setattr", 0) <= 4 and per_op.get("setxattr", 0) <= 4  # the two directories only
    assert sum(per_op.values()) <= 3 * files + 20, per_op

    second = tmp_path / "second"  # what the commits stored, not this client's view
    chunkfs("mount", cluster.metaserver, second, "--secret-file", cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-2'}")
    try:
        for i in range(files):
            want, got = os.lstat(source / "sub" / f"f{i}"), os.lstat(second / "copy" / "sub" / f"f{i}")
            assert (got.st_mode, got.st_uid, got.st_gid, got.st_size, got.st_mtime_ns) == \
                (want.st_mode, want.st_uid, want.st_gid, want.st_size, want.st_mtime_ns), i
            assert (second / "copy" / "sub" / f"f{i}").read_bytes() == (source / "sub" / f"f{i}").read_bytes()
    finally:
        unmount(second)


def test_mode_set_on_an_open_new_file_shows_at_once_here_and_after_close_elsewhere(cluster, tmp_path):
    path = cluster.mnt / "modes"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"x" * 100)
        os.fchmod(fd, 0o751)
        os.utime(fd, ns=(5, 7))
        st = os.fstat(fd)
        assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_size) == (0o751, 7, 100)
        assert os.stat(path).st_mode & 0o7777 == 0o751
        os.write(fd, b"y")  # a write after utime: the file's mtime is the write's again
        assert os.fstat(fd).st_mtime_ns > 7
    finally:
        os.close(fd)
    second = tmp_path / "second"
    chunkfs("mount", cluster.metaserver, second, "--secret-file", cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-2'}")
    try:
        st = os.stat(second / "modes")
        assert (st.st_mode & 0o7777, st.st_size) == (0o751, 101) and st.st_mtime_ns > 7
        assert st.st_mtime_ns == os.stat(path).st_mtime_ns
    finally:
        unmount(second)


def test_an_unchanged_small_file_opens_and_reads_again_without_a_call(cluster):
    """Open leases: once this mount opened a file, opening and reading it again cost no
    metaserver call while nobody changes it (close-to-open with another client: test_two_clients)."""
    note = cluster.mnt / "read-again"
    note.write_bytes(b"read again and again\n")
    assert note.read_bytes() == b"read again and again\n"  # asks, and takes an open lease

    def without_calls() -> bool:
        before = metaserver_calls(cluster)
        assert note.read_bytes() == b"read again and again\n"
        return metaserver_calls(cluster) == before

    # (an open between two answers of the mount's change feed may still ask)
    wait_until(without_calls, 30, "an unchanged small file opened and read without a call")


@pytest.mark.skipif(os.geteuid() != 0 or not PYTHON, reason="needs root (to run as another user) and python3")
def test_another_users_open_of_an_unchanged_file_costs_no_call_either(cluster):
    """Open leases answer every user's opens: the kernel checks the opener's permission (mode and
    ACLs), from attributes the change feed keeps right (test_acl.py: an ACL set on another client
    is enforced here)."""
    note = cluster.mnt / "read-by-a-user"
    note.write_bytes(b"read by a user\n")
    os.chmod(note, 0o644)

    def read_as_user() -> bytes:
        # (cwd: the user may not pass the test's temporary directories above the mount)
        return subprocess.run([PYTHON, "-c", f"import sys; sys.stdout.write(open({note.name!r}).read())"],
                              cwd=cluster.mnt, user=USER, group=GROUP, capture_output=True, check=True,
                              timeout=30).stdout

    assert read_as_user() == b"read by a user\n"

    def without_calls() -> bool:
        before = metaserver_calls(cluster)
        assert read_as_user() == b"read by a user\n"
        return metaserver_calls(cluster) == before

    wait_until(without_calls, 30, "an unchanged file opened and read by another user without a call")
