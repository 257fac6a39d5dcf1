"""A mount answers stats and lookups of what it knows without asking the metaserver, and what it
answers so is what a fresh mount reads from the metaserver."""

from __future__ import annotations

import os
import signal
import stat

from chunkfs.daemons import unmount
from conftest import chunkfs, metrics_of, wait_until

READ_OPS = ("getattr", "lookup")


def metadata_reads(cluster) -> float:
    metrics = metrics_of(cluster.metaserver)
    return sum(value for key, value in metrics.items()
               if key.startswith("chunkfs_http_requests_total{") and any(f'op="{op}"' in key for op in READ_OPS))


def stat_fields(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def test_files_written_here_stat_without_a_call(cluster):
    folder = cluster.mnt / "written"
    folder.mkdir()
    for i in range(50):
        (folder / f"f{i}").write_bytes(b"x" * 100 * i)
    before = metadata_reads(cluster)
    sizes = [os.stat(folder / f"f{i}").st_size for i in range(50)]
    with open("/proc/sys/vm/drop_caches", "w") as f:  # the kernel forgets; the mount does not
        f.write("2\n")
    sizes_after_drop = [os.stat(folder / f"f{i}").st_size for i in range(50)]
    assert sizes == sizes_after_drop == [100 * i for i in range(50)]
    assert metadata_reads(cluster) - before <= 3  # the mount root and the folder at most


def test_what_the_mount_answers_is_what_the_metaserver_holds(cluster, second_mount):
    a = cluster.mnt / "agree"
    a.mkdir()
    (a / "sub").mkdir()
    (a / "file").write_bytes(b"data")
    os.symlink("file", a / "link")
    os.link(a / "file", a / "hard")
    os.chmod(a / "file", 0o640)
    os.utime(a / "file", ns=(1_000_000_000, 2_000_000_000))
    os.rename(a / "hard", a / "sub" / "moved")
    os.unlink(a / "link")
    b = second_mount / "agree"
    for name in (".", "sub", "file", "sub/moved"):
        assert stat_fields(os.stat(a / name)) == stat_fields(os.stat(b / name)), name
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == ["file", "sub"]


def test_a_name_made_on_another_client_opens_here_at_once(cluster, second_mount):
    a, b = cluster.mnt / "fresh", second_mount / "fresh"
    a.mkdir()
    (a / "old").write_text("listed")
    assert os.listdir(a) == ["old"]  # this mount now knows every name there
    for i in range(20):
        (b / f"new{i}").write_text(f"closed on b {i}")
        assert (a / f"new{i}").read_text() == f"closed on b {i}"  # no wait for the change feed



def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_metaserver_restart_drops_the_cache_even_after_as_many_new_changes(fresh_cluster, tmp_path):
    """The change feed counts from 1 again at each metaserver start. A mount that follows it
    again only after the new metaserver published more changes than it had seen must still
    drop what it cached (the feed's epoch changed): it once kept the old attributes until they
    timed out (60 s), and the changes the new feed made before its seq were never sent to it."""
    c, other = fresh_cluster, tmp_path / "other"
    chunkfs("mount", c.metaserver, other, "--secret-file", c.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-other'}")
    try:
        for name in ("watched", "probe", *(f"before{i}" for i in range(10))):
            (c.mnt / name).write_bytes(b"x")
            os.chmod(c.mnt / name, 0o644)
        assert mode_of(c.mnt / "watched") == mode_of(c.mnt / "probe") == 0o644  # cached here now
        os.chmod(other / "probe", 0o600)
        wait_until(lambda: mode_of(c.mnt / "probe") == 0o600, 20,
                   "the mount follows the feed past its own changes (its seq: about 40)")
        mount_pid = c.pid("mount")
        assert mount_pid is not None
        os.kill(mount_pid, signal.SIGSTOP)  # it polls the feed again only once the changes are made
        try:
            c.kill("metaserver")
            c.up()  # starts the metaserver again and leaves the mount as it is
            os.chmod(other / "watched", 0o600)  # an early seq of the new feed
            for i in range(40):
                (other / f"after{i}").write_bytes(b"")  # 80 changes: past the mount's seq
        finally:
            os.kill(mount_pid, signal.SIGCONT)
        wait_until(lambda: mode_of(c.mnt / "watched") == 0o600, 20,
                   "the mount sees a change made on another client while it was away")
    finally:
        unmount(other)
