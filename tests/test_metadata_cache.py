"""A mount answers stats and lookups of what it knows without asking the metaserver, and what it
answers so is what a fresh mount reads from the metaserver."""

from __future__ import annotations

import os

from conftest import metrics_of

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
