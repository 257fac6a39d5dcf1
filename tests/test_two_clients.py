"""Two mounts of one cluster: close-to-open, and changes pushed within a second even though
each kernel caches names and attributes for a minute."""

from __future__ import annotations

import os
import time


def eventually(check, timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.02)


def test_changes_on_one_client_show_on_the_other_within_a_second(cluster, second_mount):
    a, b = cluster.mnt / "shared", second_mount / "shared"
    a.mkdir()
    (a / "f").write_text("first")
    eventually(lambda: (b / "f").exists())
    assert (b / "f").read_text() == "first"
    os.listdir(b)
    os.stat(b / "f")  # now cached in b's kernel

    (a / "f").write_text("second, longer")
    eventually(lambda: os.stat(b / "f").st_size == len("second, longer"))
    assert (b / "f").read_text() == "second, longer"  # close-to-open: never the old bytes

    (a / "g").write_text("new")
    eventually(lambda: "g" in os.listdir(b))
    os.rename(a / "g", a / "h")
    eventually(lambda: sorted(os.listdir(b)) == ["f", "h"])
    os.unlink(a / "h")
    eventually(lambda: not (b / "h").exists())
    os.chmod(a / "f", 0o600)
    eventually(lambda: os.stat(b / "f").st_mode & 0o777 == 0o600)


def test_big_file_rewritten_elsewhere_is_read_whole(cluster, second_mount):
    a, b = cluster.mnt / "big-shared", second_mount / "big-shared"
    first = os.urandom(9 * 1024 * 1024)
    a.write_bytes(first)
    eventually(lambda: b.exists() and b.stat().st_size == len(first))
    assert b.read_bytes() == first
    second = os.urandom(9 * 1024 * 1024)
    a.write_bytes(second)
    eventually(lambda: b.stat().st_mtime_ns == a.stat().st_mtime_ns)
    assert b.read_bytes() == second
