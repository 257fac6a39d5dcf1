"""flock and fcntl (POSIX record) locks hold between processes and between clients: the mount
passes every lock request to the metaserver, which keeps the locks of every client (README,
"Consistency"). Processes of one mount, and of two mounts of one cluster, exclude each other as
on a local filesystem."""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time

import pyfuse3
import pytest

from chunkfs import auth, mounts
from chunkfs.daemons import answers_health
from chunkfs.protocol import records as r
from conftest import another_mount, chunkfs, metrics_of, wait_until
from line_process import LineProcess, Locker
from signed_requests import send, sign_headers

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
def lockers():
    """Makes Lockers; every one is killed at the end, whatever happened."""
    made: list[Locker] = []

    def make(path) -> Locker:
        made.append(Locker(path))
        return made[-1]

    yield make
    for locker in made:
        locker.end()


def lock_waits(cluster) -> int:
    return cluster.status()["lock_waits"]


def test_the_installed_pyfuse3_passes_lock_requests_on():
    """scripts/bootstrap.sh builds pyfuse3 with patches/pyfuse3-locks.patch; without it the
    kernel keeps locks to itself and they hold on one client only."""
    assert getattr(pyfuse3, "LOCK_HANDLERS", 0) == 3, "pyfuse3 lacks the lock handlers (or has older ones): make deps"
    for handler in ("getlk", "setlk", "flock"):
        assert handler in vars(pyfuse3.Operations)


# ---- one client, several processes -----------------------------------------------------------------
@pytest.fixture
def locked_file(cluster):
    path = cluster.mnt / "locked"
    path.write_bytes(b"\0" * 4096)
    holders = []

    def hold(kind: str) -> LineProcess:
        holders.append(LineProcess(HOLDER, kind, path, ready="locked"))
        return holders[-1]

    yield path, hold
    for holder in holders:
        holder.end()
    path.unlink()


def test_flock_excludes_other_processes_until_released(locked_file):
    path, hold = locked_file
    holder = hold("flock")
    with open(path, "r+b") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.finish()

        def free() -> bool:  # the holder's exit closes its descriptor, which releases its lock
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_until(free, 10, "the flock is free once its holder exited", poll_s=0.05)


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


def test_a_blocking_lock_waits_for_the_holder(locked_file, cluster):
    path, hold = locked_file
    holder = hold("posix")
    fd = os.open(path, os.O_RDWR)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (fcntl.lockf(fd, fcntl.LOCK_EX), got.set()), daemon=True)
    try:
        waiter.start()
        wait_until(lambda: lock_waits(cluster) == 1, 20, "the metaserver holds the request waiting")
        assert not got.is_set()
        holder.finish()  # the holder goes: its exit releases its lock
        waiter.join(timeout=30)
        assert got.is_set(), "woken when the holder exited"
    finally:
        if waiter.is_alive():  # the holder never went: end it, which ends the wait
            holder.end()
            waiter.join(30)
        os.close(fd)


def test_locks_of_a_process_go_with_its_close(cluster, lockers):
    path = cluster.mnt / "closed"
    path.write_bytes(b"x" * 10)
    a, b = lockers(path), lockers(path)
    assert a.do("posix w 0 0 nowait") == "ok"
    assert b.do("posix w 0 0 nowait") == "err EAGAIN"
    assert a.do("close") == "ok"  # POSIX: any close by the process drops its locks on the file
    assert b.do("posix w 0 0 nowait") == "ok"


# ---- two clients ------------------------------------------------------------------------------------
def test_flock_excludes_between_clients(cluster, second_mount, lockers):
    (cluster.mnt / "flocked").write_bytes(b"x")
    a, b = lockers(cluster.mnt / "flocked"), lockers(second_mount / "flocked")
    assert a.do("flock ex nowait") == "ok"
    assert b.do("flock ex nowait") == "err EAGAIN"
    assert b.do("flock sh nowait") == "err EAGAIN"
    assert a.do("flock un nowait") == "ok"
    assert b.do("flock ex nowait") == "ok"
    assert a.do("flock sh nowait") == "err EAGAIN"


def test_the_flock_command_on_one_mount_holds_off_the_other(cluster, second_mount):
    """The acceptance as a user tries it, with util-linux flock(1): `flock FILE -c CMD` on mount A
    holds the lock while CMD runs; `flock -n` on mount B fails meanwhile, and a blocking `flock`
    on B gets the lock once A's command ended, seeing what it wrote last."""
    a, b = cluster.mnt / "lockfile", second_mount / "lockfile"
    holder = subprocess.Popen(["flock", a, "-c", f"echo held; sleep 3; echo done > {shlex.quote(str(a))}"],
                              stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"  # A's command runs
        tried = subprocess.run(["flock", "-n", b, "true"], timeout=30)
        assert tried.returncode == 1  # flock -n: the lock is held elsewhere (its -E default, 1)
        assert holder.poll() is None, "A's command was still running when B was refused"
        waiter = subprocess.Popen(["flock", b, "-c", f"cat {shlex.quote(str(b))}"], stdout=subprocess.PIPE, text=True)
        wait_until(lambda: metrics_of(cluster.metaserver)["chunkfs_cluster_lock_waits"] == 1, 10,
                   "B's flock waits at the metaserver", poll_s=0.05)
        assert holder.poll() is None, "B's flock was waiting while A's command ran"
        assert holder.wait(timeout=30) == 0
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 0 and out == "done\n"  # after A's last write: once A's command ended
    finally:
        for process in (holder, waiter):
            if process is not None:
                process.kill()
                process.wait()


def test_shared_locks_between_clients(cluster, second_mount, lockers):
    (cluster.mnt / "shared").write_bytes(b"x")
    a, b = lockers(cluster.mnt / "shared"), lockers(second_mount / "shared")
    c = lockers(second_mount / "shared")
    assert a.do("flock sh nowait") == "ok"
    assert b.do("flock sh nowait") == "ok"
    assert c.do("flock ex nowait") == "err EAGAIN"
    assert a.do("posix r 0 100 nowait") == "ok"
    assert b.do("posix r 50 100 nowait") == "ok"
    assert c.do("posix w 0 1 nowait") == "err EAGAIN"
    assert c.do("posix w 200 1 nowait") == "ok"


def test_fcntl_ranges_split_between_clients(cluster, second_mount, lockers):
    (cluster.mnt / "ranges").write_bytes(b"x" * 1000)
    a, b = lockers(cluster.mnt / "ranges"), lockers(second_mount / "ranges")
    assert a.do("posix w 0 100 nowait") == "ok"
    assert a.do("posix u 40 20 nowait") == "ok"  # unlock the middle: 0..39 and 60..99 stay locked
    assert b.do("posix w 40 20 nowait") == "ok"
    assert b.do("posix w 39 1 nowait") == "err EAGAIN"
    assert b.do("posix w 60 1 nowait") == "err EAGAIN"
    # F_GETLK on the other client names the conflicting range; its pid is 0 (not a process here)
    assert b.do("getlk w 0 10") == "lock w 0 40 0"
    assert b.do("getlk w 60 100") == "lock w 60 40 0"
    assert b.do("getlk w 100 10") == "lock u 100 10 0"
    assert a.do("posix r 0 40 nowait") == "ok"  # a downgrade: readers may share 0..39 now
    assert b.do("posix r 0 40 nowait") == "ok"


def test_a_blocking_wait_is_woken_when_the_other_client_releases(cluster, second_mount, lockers):
    (cluster.mnt / "woken").write_bytes(b"x")
    a, b = lockers(cluster.mnt / "woken"), lockers(second_mount / "woken")
    assert a.do("flock ex nowait") == "ok"
    assert a.do("posix w 0 0 nowait") == "ok"
    b.send("flock ex wait")
    wait_until(lambda: lock_waits(cluster) == 1, 20, "b's flock waits at the metaserver")
    assert a.do("flock un nowait") == "ok"
    assert b.answer() == "ok"
    b.send("posix w 0 0 wait")
    wait_until(lambda: lock_waits(cluster) == 1, 20, "b's fcntl lock waits at the metaserver")
    assert a.do("posix u 0 0 nowait") == "ok"
    assert b.answer() == "ok"


def test_a_signal_interrupts_a_wait_with_eintr(cluster, second_mount, lockers):
    (cluster.mnt / "interrupted").write_bytes(b"x")
    a, b = lockers(cluster.mnt / "interrupted"), lockers(second_mount / "interrupted")
    assert a.do("posix w 0 0 nowait") == "ok"
    for command in ("posix w 0 0 wait", "flock ex wait"):
        if command.startswith("flock"):
            assert a.do("flock ex nowait") == "ok"
        b.send(command)
        wait_until(lambda: lock_waits(cluster) == 1, 20, f"{command} waits at the metaserver")
        b.process.send_signal(signal.SIGUSR1)
        assert b.answer() == "err EINTR"
        wait_until(lambda: lock_waits(cluster) == 0, 20, "the interrupted wait is withdrawn")
    assert a.do("posix u 0 0 nowait") == "ok"
    assert a.do("flock un nowait") == "ok"
    assert a.do("getlk w 0 0") == "lock u 0 0 0"  # the interrupted process got nothing


def test_a_wait_that_would_deadlock_is_edeadlk(cluster, second_mount, lockers):
    (cluster.mnt / "deadlock").write_bytes(b"x" * 10)
    a, b = lockers(cluster.mnt / "deadlock"), lockers(second_mount / "deadlock")
    assert a.do("posix w 0 1 nowait") == "ok"
    assert b.do("posix w 1 1 nowait") == "ok"
    a.send("posix w 1 1 wait")  # a waits for b
    wait_until(lambda: lock_waits(cluster) == 1, 20, "a waits for b's byte")
    # b waiting for a would close the cycle (errorcode names EDEADLK by its alias EDEADLOCK)
    assert b.do("posix w 0 1 wait") == f"err {errno.errorcode[errno.EDEADLK]}"
    assert b.do("posix u 1 1 nowait") == "ok"
    assert a.answer() == "ok"


COUNTER = """
import fcntl, sys
path, times, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "r+b", buffering=0) as f:
    for _ in range(times):
        fcntl.lockf(f, fcntl.LOCK_EX) if kind == "posix" else fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        value = int(f.read() or b"0")
        f.seek(0)
        f.write(b"%d" % (value + 1))
        fcntl.lockf(f, fcntl.LOCK_UN) if kind == "posix" else fcntl.flock(f, fcntl.LOCK_UN)
"""


@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_a_counter_under_a_lock_counts_every_increment_of_two_clients(cluster, second_mount, kind):
    """Unlocking commits what was written; locking reads what the last holder committed."""
    path = cluster.mnt / f"counter-{kind}"
    path.write_bytes(b"0")
    times = 1000
    workers = [subprocess.Popen([sys.executable, "-c", COUNTER, str(mnt / path.name), str(times), kind])
               for mnt in (cluster.mnt, second_mount)]
    try:
        for worker in workers:
            assert worker.wait(timeout=600) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert path.read_bytes() == b"%d" % (2 * times)
    assert (second_mount / path.name).read_bytes() == b"%d" % (2 * times)


SQLITE_WRITER = """
import sqlite3, sys, time
path, writer, duration_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
db = sqlite3.connect(path, timeout=2, isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE")
deadline, i, busy = time.monotonic() + duration_s, 0, 0
while time.monotonic() < deadline:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:  # the other writer holds the database: try again
        assert "locked" in str(exc), exc
        busy += 1
        continue
    db.execute("INSERT INTO t (writer, n, payload) VALUES (?, ?, randomblob(200))", (writer, i))
    while True:  # a COMMIT refused as busy (the other writer reading) leaves the transaction open
        try:
            db.execute("COMMIT")
            break
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc), exc
            busy += 1
    print(i, flush=True)  # acknowledged: committed
    i += 1
db.close()
print(f"busy {busy}", file=sys.stderr)
"""


@pytest.mark.parametrize("duration_s", [60, pytest.param(300, marks=pytest.mark.long)], ids=["minute", "long"])
def test_sqlite_on_two_clients_at_once(cluster, second_mount, duration_s):
    """Two writers on two mounts insert into one database in rollback-journal mode for a
    minute (each until its deadline, whatever the other does); then the database is whole and
    holds exactly the rows acknowledged. (WAL needs shared memory between the writers, which no
    network filesystem gives: README.)"""
    import sqlite3

    (cluster.mnt / "sqlite").mkdir()  # leased to this mount: the database is created without a call
    path = cluster.mnt / "sqlite" / "shared.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INTEGER, n INTEGER, payload BLOB)")
    db.commit()
    db.close()
    writers = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(mnt / "sqlite" / "shared.db"), str(w),
                                 str(duration_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w, mnt in enumerate((cluster.mnt, second_mount))]
    acknowledged: list[list[int]] = [[], []]
    try:
        for w, writer in enumerate(writers):
            out, err = writer.communicate(timeout=duration_s + 120)  # a commit under way at the deadline ends
            assert writer.returncode == 0, err
            acknowledged[w] = [int(line) for line in out.split()]
            print(f"writer {w}: {len(acknowledged[w])} rows, {err.strip()}")
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert all(acknowledged), "both writers got rows in"
    expected = sorted((w, n) for w in (0, 1) for n in acknowledged[w])
    for mnt in (cluster.mnt, second_mount):
        db = sqlite3.connect(mnt / "sqlite" / "shared.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = db.execute("SELECT writer, n FROM t").fetchall()
        finally:
            db.close()
        assert sorted(stored) == expected


def test_locks_listed_by_the_cli(cluster, lockers):
    path = cluster.mnt / "listed"
    path.write_bytes(b"x")
    a = lockers(path)
    assert a.do("posix w 10 5 nowait") == "ok"
    assert a.do("flock sh nowait") == "ok"
    listed = json.loads(chunkfs("locks", path, "--json").stdout)
    assert sorted((lock["flock"], lock["type"], lock["start"], lock["end"], lock["pid"]) for lock in listed) == [
        (False, fcntl.F_WRLCK, 10, 14, a.process.pid), (True, fcntl.F_RDLCK, 0, 2**63 - 1, a.process.pid)]
    assert chunkfs("status", "--dir", cluster.dir, "--json").stdout.count('"locks_held"') == 1


def test_ofd_locks_hold_between_clients_and_end_with_their_open_file(cluster, second_mount, lockers):
    (cluster.mnt / "ofd").write_bytes(b"x")
    a, b = lockers(cluster.mnt / "ofd"), lockers(second_mount / "ofd")
    assert a.do("ofd w 0 10 nowait") == "ok"
    assert b.do("ofd w 5 1 nowait") == "err EAGAIN"
    assert b.do("posix w 5 1 nowait") == "err EAGAIN"
    assert b.do("ofd w 10 1 nowait") == "ok"
    assert a.do("close") == "ok"  # its open file's last close: the lock goes

    def free() -> bool:  # the kernel sends the release after close() returned
        return b.do("ofd w 0 10 nowait") == "ok"

    wait_until(free, 20, "a's OFD lock ends with its open file", poll_s=0.05)


def test_the_python_api_locks_against_a_mount(cluster, lockers):
    import chunkfs.client

    (cluster.mnt / "api-locked").write_bytes(b"0")
    mounted = lockers(cluster.mnt / "api-locked")
    with chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, retry_s=5) as fs:
        with fs.open("/api-locked", "r+b") as f:
            f.lock(start=0, length=10)
            assert mounted.do("posix w 5 1 nowait") == "err EAGAIN"
            assert mounted.do("getlk w 0 0") == "lock w 0 10 0"
            assert mounted.do("posix w 10 5 nowait") == "ok"
            with pytest.raises(BlockingIOError):
                f.lock(blocking=False, start=12, length=1)
            f.seek(0)
            f.write(b"1")
            f.unlock(start=0, length=10)  # commits the write first
            assert mounted.do("posix w 0 10 nowait") == "ok"
            assert (cluster.mnt / "api-locked").read_bytes() == b"1"
            f.lock(exclusive=False, start=100, length=1)
        assert mounted.do("posix w 100 1 nowait") == "ok"  # its locks went with its close


# ---- a client that dies -------------------------------------------------------------------------------
@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--client-timeout-s", "3")}], indirect=True)
def test_the_locks_of_a_killed_client_go_when_its_session_times_out(fresh_cluster, tmp_path, lockers):
    cluster = fresh_cluster
    (cluster.mnt / "orphaned").write_bytes(b"x")
    with another_mount(cluster, tmp_path / "doomed") as doomed:
        holder = lockers(doomed / "orphaned")
        assert holder.do("flock ex nowait") == "ok"
        assert holder.do("posix w 0 0 nowait") == "ok"
        record = mounts.find(doomed)
        assert record is not None
        os.kill(record["pid"], signal.SIGKILL)  # the client dies holding both locks
        other = lockers(cluster.mnt / "orphaned")
        assert other.do("flock ex nowait") == "err EAGAIN"
        wait_until(lambda: other.do("flock ex nowait") == "ok", 60, "the dead client's flock is dropped")
        assert other.do("posix w 0 0 nowait") == "ok"


# ---- a metaserver restart ------------------------------------------------------------------------------
GRACE_S = 4.0  # the metaserver's lock_grace_s in the restart test (15 by default)


def restarted_metaserver(cluster, work: concurrent.futures.ThreadPoolExecutor) -> tuple[float, concurrent.futures.Future]:
    """The metaserver killed and started again (`chunkfs up`, in `work`); returns when it answers
    (time.monotonic()) and the `up` under way (it waits for the chunkservers after that)."""
    cluster.kill("metaserver")
    up = work.submit(cluster.up)
    wait_until(lambda: up.done() or answers_health(f"http://{cluster.metaserver}/health", timeout_s=0.5), 60,
               "the restarted metaserver answers", poll_s=0.02)
    return time.monotonic(), up


def lock_as_a_client_gone(cluster, req: r.LockReq) -> None:
    """`req` granted to a client that will not come back (a hand-made request: no mount to kill)."""
    body = r.json_encode(req)
    headers = sign_headers(auth.load_secret(cluster.secret_file), cluster.metaserver, "POST", "/v1/fs/lock", body,
                           (("Content-Type", "application/json"), ("X-Chunkfs-Client", "gone")))
    status, answer = send(cluster.metaserver, "POST", "/v1/fs/lock", headers, body)
    assert status == 200 and json.loads(answer)["granted"], answer


@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--lock-grace-s", str(GRACE_S))}], indirect=True)
def test_a_restarted_metaserver_gets_every_lock_back_before_it_grants_a_new_one(fresh_cluster, tmp_path, capsys):
    """Locks live in the metaserver's memory; after a restart (SIGKILL here) each client gives
    back what it holds (reclaim) and a new lock waits until they have: the holders keep their
    locks, nobody else gets them in between (README, "Locks"). One client that held a lock never
    comes back, so new locks wait the whole grace (lock_grace_s); were every holder alive, the
    grace would end with the last reclaim. Prints both times (not a speed test: a shared
    machine), counted from the restarted metaserver's first answer."""
    cluster = fresh_cluster
    (cluster.mnt / "kept").write_bytes(b"x" * 200)
    for name in ("new", "abandoned"):
        (cluster.mnt / name).write_bytes(b"x")
    waited: dict[str, float] = {}

    def locks_held() -> float:
        return metrics_of(cluster.metaserver)["chunkfs_cluster_locks_held"]

    with another_mount(cluster, tmp_path / "b") as b_mnt:
        a, b, other = Locker(cluster.mnt / "kept"), Locker(b_mnt / "kept"), Locker(b_mnt / "kept")
        newcomer = Locker(cluster.mnt / "new")
        try:
            assert a.do("posix w 0 100 nowait") == "ok"
            assert a.do("flock sh nowait") == "ok"
            assert b.do("posix r 150 10 nowait") == "ok"
            lock_as_a_client_gone(cluster, r.LockReq(ino=os.stat(cluster.mnt / "abandoned").st_ino, owner=1,
                                                     type=r.F_WRLCK))
            with concurrent.futures.ThreadPoolExecutor(1) as work:
                answered, up = restarted_metaserver(cluster, work)
                newcomer.send("posix w 0 0 wait")
                wait_until(lambda: locks_held() == 3, 30, "the live holders' locks reclaimed", poll_s=0.02)
                waited["the live holders' reclaims served"] = time.monotonic() - answered
                assert not newcomer.answered(), "a new lock waits while the grace lasts"
                assert newcomer.answer() == "ok"
                waited["a new lock granted (one holder gone)"] = time.monotonic() - answered
                up.result()
            assert other.do("posix w 50 1 nowait") == "err EAGAIN"  # a's, given back by its client
            assert other.do("posix w 155 1 nowait") == "err EAGAIN"  # b's
            assert other.do("flock ex nowait") == "err EAGAIN"
            assert other.do("flock sh nowait") == "ok"
            assert other.do("posix r 120 10 nowait") == "ok"
            listed = json.loads(chunkfs("locks", cluster.mnt / "kept", "--json").stdout)
            assert {(lock["flock"], lock["type"], lock["start"], lock["end"]) for lock in listed
                    if lock["pid"] == a.process.pid} == {(False, fcntl.F_WRLCK, 0, 99), (True, fcntl.F_RDLCK, 0, 2**63 - 1)}
            assert a.do("posix u 0 0 nowait") == "ok"
            assert other.do("posix w 50 1 nowait") == "ok"
            assert a.do("write 0 still-mine") == "ok"  # nothing was lost: its file works on
        finally:
            for locker in (a, b, other, newcomer):
                locker.end()
    with capsys.disabled():
        print(f"\nafter a restart (lock_grace_s {GRACE_S:.0f}), s from the metaserver's first answer: "
              + ", ".join(f"{what} {s:.2f}" for what, s in waited.items()))


# ---- many waiters ----------------------------------------------------------------------------------
CROWD = """
import fcntl, sys, threading
path, count = sys.argv[1], int(sys.argv[2])
files = [open(path, "rb") for _ in range(count)]  # each open file is a flock owner of its own
print("ready", flush=True)
sys.stdin.readline()
def take(f):
    fcntl.flock(f, fcntl.LOCK_EX)
    fcntl.flock(f, fcntl.LOCK_UN)
threads = [threading.Thread(target=take, args=(f,)) for f in files]
for thread in threads:
    thread.start()
print("waiting", flush=True)
for thread in threads:
    thread.join()
print("all", flush=True)
"""


def test_a_hundred_waiters_on_one_mount(cluster, lockers):
    """A waiting lock request holds none of the mount's request workers (max_tasks, 64): a
    hundred processes wait on one file and the mount answers everything else meanwhile."""
    path = cluster.mnt / "crowded"
    path.write_bytes(b"x")
    holder = lockers(path)
    assert holder.do("flock ex nowait") == "ok"
    crowd = LineProcess(CROWD, path, 100, ready="ready")
    try:
        assert crowd.do("go") == "waiting"
        wait_until(lambda: lock_waits(cluster) == 100, 60, "100 flock waits at the metaserver")
        assert subprocess.run(["cat", str(path)], capture_output=True, timeout=30).stdout == b"x"
        assert holder.do("posix w 0 0 nowait") == "ok"  # other lock requests are answered
        assert holder.do("flock un nowait") == "ok"
        assert crowd.answer() == "all"  # each took the lock in turn
        assert lock_waits(cluster) == 0
    finally:
        crowd.end()


def test_the_cost_of_an_uncontended_lock(cluster, capsys):
    """Not a speed test (the machine is shared): prints what a lock and an unlock cost, beside a
    statvfs (one plain metaserver round trip) for scale."""
    path = cluster.mnt / "timed"
    path.write_bytes(b"x")
    rounds = 200
    spent = {"fcntl lock": 0.0, "fcntl unlock": 0.0, "flock lock": 0.0, "flock unlock": 0.0, "statvfs": 0.0}

    def timed(what: str, call) -> None:
        started = time.perf_counter()
        call()
        spent[what] += time.perf_counter() - started

    with open(path, "r+b") as f:
        for _ in range(rounds):
            timed("fcntl lock", lambda: fcntl.lockf(f, fcntl.LOCK_EX))
            timed("fcntl unlock", lambda: fcntl.lockf(f, fcntl.LOCK_UN))
            timed("flock lock", lambda: fcntl.flock(f, fcntl.LOCK_EX))
            timed("flock unlock", lambda: fcntl.flock(f, fcntl.LOCK_UN))
            timed("statvfs", lambda: os.statvfs(cluster.mnt))
    with capsys.disabled():
        print("\nuncontended, ms each: " + ", ".join(f"{what} {s / rounds * 1e3:.2f}" for what, s in spent.items()))
