"""`chunkfs snapshot`: copies that share chunk versions, diverge when written, survive the removal
of their source, are all-or-nothing when the metaserver is killed, and keep fsck clean.
Snapshots against a model (with quotas and the trash): tests/test_quotas.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CHUNKFS, chunkfs, wait_until

MiB = 1024 * 1024


@pytest.fixture
def home(cluster, request):
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=cluster.mnt))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def chunk_files(cluster) -> int:
    """Chunk versions stored on the chunkservers' disks (every replica)."""
    return sum(1 for _ in (cluster.dir / "chunkservers").glob("cs*/chunks/*/*.chunk"))


def fsck_clean(cluster) -> dict:
    report = json.loads(chunkfs("fsck", "--dir", cluster.dir, "--json", check=False).stdout)
    assert (report["exit_code"], report["sharing_wrong"], report["quotas_wrong"]) == (0, [], []), report
    return report


def make_tree(root: Path) -> dict[str, bytes]:
    contents = {"a/small": b"tiny", "a/b/big": os.urandom(9 * MiB + 5), "c": os.urandom(300_000), "a/b/empty": b""}
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.link(root / "c", root / "a" / "c-link")
    os.symlink("a/small", root / "to-small")
    return contents


def test_a_snapshot_shares_chunks_and_diverges_on_write(cluster, home):
    contents = make_tree(home / "doc")
    files_before = chunk_files(cluster)
    chunkfs("snapshot", home / "doc", home / "doc-monday")
    assert chunk_files(cluster) == files_before  # no chunk copied
    for name, data in contents.items():
        assert (home / "doc-monday" / name).read_bytes() == data
    assert os.readlink(home / "doc-monday" / "to-small") == "a/small"
    assert os.stat(home / "doc-monday" / "c").st_ino == os.stat(home / "doc-monday" / "a" / "c-link").st_ino
    assert os.stat(home / "doc-monday" / "c").st_nlink == 2
    with open(home / "doc" / "a" / "b" / "big", "r+b") as f:  # one chunk of the source rewritten
        f.seek(5 * MiB)
        f.write(b"changed")
    assert (home / "doc-monday" / "a" / "b" / "big").read_bytes() == contents["a/b/big"]
    (home / "doc-monday" / "c").write_bytes(b"the snapshot's own")
    assert (home / "doc" / "c").read_bytes() == contents["c"]
    fsck_clean(cluster)


def test_removing_the_source_keeps_the_snapshot_whole(cluster, home):
    contents = make_tree(home / "src")
    chunkfs("snapshot", home / "src", home / "copy")
    shutil.rmtree(home / "src")
    wait_until(lambda: cluster.status()["pending_deletions"] == 0, 60, "the deleter done with the source")
    fsck_clean(cluster)  # the disks still hold every chunk the copy's records name
    for name, data in contents.items():
        assert (home / "copy" / name).read_bytes() == data


def test_a_read_only_snapshot_refuses_every_change_with_erofs(cluster, home):
    contents = make_tree(home / "doc")
    (home / "doc" / "empty-dir").mkdir()
    made = chunkfs("snapshot", home / "doc", home / "frozen", "--read-only", "--json")
    assert json.loads(made.stdout)["read_only"] is True
    frozen = home / "frozen"
    changes = {
        "write": lambda: (frozen / "c").write_bytes(b"no"),
        "append": lambda: open(frozen / "a" / "small", "ab").close(),
        "truncate": lambda: os.truncate(frozen / "c", 0),
        "create": lambda: (frozen / "new").write_bytes(b"no"),
        "mkdir": lambda: (frozen / "a" / "new-dir").mkdir(),
        "unlink": lambda: (frozen / "c").unlink(),
        "rmdir of an empty directory": lambda: (frozen / "empty-dir").rmdir(),
        "rename inside": lambda: os.rename(frozen / "c", frozen / "c2"),
        "rename out": lambda: os.rename(frozen / "c", home / "c-out"),
        "rename of the snapshot": lambda: os.rename(frozen, home / "thawed"),
        "rename over a file in it": lambda: os.rename(home / "doc" / "c", frozen / "to-small"),
        "chmod": lambda: os.chmod(frozen / "c", 0o600),
        "utime": lambda: os.utime(frozen / "c", (0, 0)),
        "setxattr": lambda: os.setxattr(frozen / "c", "user.note", b"x"),
        "hard link into it": lambda: os.link(home / "doc" / "c", frozen / "link"),
        "hard link out of it": lambda: os.link(frozen / "c", home / "link-out"),
        "symlink": lambda: os.symlink("c", frozen / "sym"),
        "snapshot into it": lambda: _snapshot_errno(home / "doc" / "c", frozen / "again"),
    }
    for what, change in changes.items():
        with pytest.raises(OSError) as err:
            change()
        assert err.value.errno == errno.EROFS, (what, err.value)
    for name, data in contents.items():
        assert (frozen / name).read_bytes() == data
    # the source stays writable, a writable copy of the frozen one too
    (home / "doc" / "c").write_bytes(b"changed")
    chunkfs("snapshot", frozen, home / "thawed")
    (home / "thawed" / "c").write_bytes(b"the copy's own")
    assert (frozen / "c").read_bytes() == contents["c"]
    # removed with the admin's command only (the test cluster's key is the cluster secret)
    assert chunkfs("snapshot-remove", frozen).returncode == 0
    assert not frozen.exists()
    fsck_clean(cluster)


def _snapshot_errno(src: Path, dst: Path) -> None:
    """`chunkfs snapshot` as an OSError with the errno its message names (EROFS)."""
    done = chunkfs("snapshot", src, dst, check=False)
    if done.returncode:
        raise OSError(errno.EROFS if "read-only" in done.stderr else errno.EIO, done.stderr)


def test_a_shared_chunk_keeps_the_highest_goal_of_its_holders(cluster, home):
    """The source's goal lowered to 1 after a snapshot: its chunk is the copy's too, so the
    replicator keeps it at the copy's goal (3) instead of trimming it for the source."""
    (home / "src").write_bytes(os.urandom(MiB))
    chunkfs("snapshot", home / "src", home / "copy")
    chunkfs("goal", home / "src", "1")
    changed = time.monotonic()
    first = _replicator_pass_after(cluster, changed)
    _replicator_pass_after(cluster, first)  # the first pass's trims are done by the next one's start
    for name in ("src", "copy"):
        layout = json.loads(chunkfs("info", home / name, "--json").stdout)
        assert [len(c["replicas"]) for c in layout["chunks"]] == [3], (name, layout["chunks"])
    fsck_clean(cluster)


def _replicator_pass_after(cluster, since: float) -> float:
    """Wait for a re-replication scan that started after `since` (time.monotonic()); its start."""
    def started() -> float:
        ago = cluster.status()["under_goal_counted_s_ago"]
        return time.monotonic() - ago if ago >= 0 else 0.0
    wait_until(lambda: started() > since + 0.2, 60, "a re-replication pass")
    return started()


def test_bad_snapshots_are_refused(cluster, home):
    (home / "d" / "sub").mkdir(parents=True)
    (home / "taken").write_bytes(b"x")
    inside = chunkfs("snapshot", home / "d", home / "d" / "sub" / "again", check=False)
    assert inside.returncode == 1 and "inside" in inside.stderr  # EINVAL
    assert chunkfs("snapshot", home / "d", home / "taken", check=False).returncode == 1  # EEXIST
    assert chunkfs("snapshot", home / "nothing", home / "x", check=False).returncode == 2  # no such SRC
    assert not (home / "d" / "sub" / "again").exists()


def test_a_metaserver_killed_during_a_snapshot_leaves_all_or_nothing(fresh_cluster):
    """SIGKILL once the metaserver is busy with the snapshot's transaction: afterwards the copy
    is whole or absent, and fsck finds every shared chunk's bookkeeping right."""
    cluster, home = fresh_cluster, fresh_cluster.mnt
    count = 2000
    tree = home / "many"
    for i in range(count // 100):
        (tree / f"d{i}").mkdir(parents=True)
        for j in range(100):
            (tree / f"d{i}" / f"f{j}").write_bytes(b"%d" % j)
    pid = cluster.pid("metaserver")
    idle_s = _cpu_s(pid)
    snap = subprocess.Popen([*CHUNKFS, "snapshot", "--dir", str(cluster.dir), str(tree), str(home / "many-snap")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: snap.poll() is not None or _cpu_s(pid) > idle_s + 0.1, 60, "the metaserver busy with it",
               poll_s=0.005)
    cluster.kill("metaserver")
    snap.communicate(timeout=60)
    cluster.up()
    wait_until(lambda: (home / "many").exists(), 60, "the mount back")
    if (home / "many-snap").exists():
        assert sum(len(files) for _root, _dirs, files in os.walk(home / "many-snap")) == count
    fsck_clean(cluster)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
