"""flock and fcntl (POSIX record) locks between processes of one client behave as on a local
filesystem: the kernel keeps them (the mount implements no lock operations), so they hold
between every process using this mount and are not seen by other clients (README)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
import threading

import pytest

from conftest import wait_until

HOLDER = """
import fcntl, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
f = open(path, "r+b")
if kind == "flock":
    fcntl.flock(f, fcntl.LOCK_EX)
elif kind == "range":
    fcntl.lockf(f, fcntl.LOCK_EX, 100, 0)  # bytes 0..99 only
else:
    fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def locked_file(cluster):
    path = cluster.mnt / "locked"
    path.write_bytes(b"\0" * 4096)
    holders = []

    def hold(kind: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield path, hold
    for proc in holders:
        proc.kill()
        proc.wait(timeout=10)
    path.unlink()


def test_flock_excludes_other_processes_until_released(locked_file):
    path, hold = locked_file
    holder = hold("flock")
    with open(path, "r+b") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=10)

        def locked_here() -> bool:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_until(locked_here, 10, "the holder's exit closed its descriptor, which released its lock", poll_s=0.05)


def test_shared_flocks_coexist_and_exclude_writers(cluster):
    path = cluster.mnt / "shared-lock"
    path.write_bytes(b"x")
    a, b, c = open(path, "rb"), open(path, "rb"), open(path, "r+b")
    try:
        fcntl.flock(a, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(c, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        for f in (a, b, c):
            f.close()
        path.unlink()


def test_fcntl_record_locks_between_processes(locked_file):
    path, hold = locked_file
    hold("range")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as held:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)  # overlaps 0..99
        assert held.value.errno == errno.EAGAIN  # what Linux's F_SETLK answers to a conflict
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 200)  # beyond it: free
        # F_GETLK names the holder's range (struct flock: type, whence, start, len, pid)
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 10, 0)
        answer = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        assert answer[0] == fcntl.F_WRLCK and answer[2:4] == (0, 100)
    finally:
        os.close(fd)


SYS_FCNTL = {"x86_64": 72, "aarch64": 25}


def blocked_in_fcntl(thread: threading.Thread) -> bool:
    """Whether `thread` sits in the fcntl system call (what /proc says it is in); False once it
    has ended."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            return f.read().split()[0] == str(SYS_FCNTL[os.uname().machine])
    except FileNotFoundError:
        return False


def test_a_blocking_lock_waits_for_the_holder(locked_file):
    path, hold = locked_file
    holder = hold("posix")
    fd = os.open(path, os.O_RDWR)
    locker = threading.Thread(target=fcntl.lockf, args=(fd, fcntl.LOCK_EX))
    try:
        locker.start()
        wait_until(lambda: blocked_in_fcntl(locker), 10, "the second locker blocked in fcntl(F_SETLKW)")
        assert locker.is_alive()
        holder.stdin.write("\n")  # the holder goes: its exit releases its lock
        holder.stdin.flush()
        locker.join(30)
        assert not locker.is_alive(), "the lock was not granted once its holder had gone"
    finally:
        if locker.is_alive():  # the holder never went: end it, which ends the wait
            holder.kill()
            locker.join(30)
        os.close(fd)
