"""A user's session on a local cluster: files in and out, trees with cp and rsync, restarts."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess

import pytest

from chunkfs import CHUNK_SIZE

MiB = 1024 * 1024


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 100 * MiB])
def test_round_trip_of_sizes(cluster, tmp_path, size):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(size))
    target = cluster.mnt / f"file-{size}"
    shutil.copyfile(source, target)
    assert os.stat(target).st_size == size
    assert sha256(target) == sha256(source)
    back = tmp_path / "back"
    shutil.copyfile(target, back)
    assert sha256(back) == sha256(source)


def test_random_offset_writes_match_a_local_reference(cluster, tmp_path):
    rng = random.Random(1234)
    reference = tmp_path / "reference"
    target = cluster.mnt / "random-writes"
    with open(reference, "w+b") as ref, open(target, "w+b") as fs:
        for _ in range(300):
            offset = rng.randrange(0, 3 * CHUNK_SIZE + 12345)
            data = os.urandom(rng.choice([1, 100, 4096, 70000, CHUNK_SIZE + 3]))
            for f in (ref, fs):
                f.seek(offset)
                f.write(data)
            if rng.random() < 0.1:
                size = rng.randrange(0, 4 * CHUNK_SIZE)
                ref.truncate(size)
                fs.truncate(size)
            if rng.random() < 0.1:
                fs.flush()
                os.fsync(fs.fileno())
    assert os.stat(target).st_size == os.stat(reference).st_size
    assert sha256(target) == sha256(reference)


def test_sparse_file_reads_zeros_in_its_holes(cluster):
    path = cluster.mnt / "sparse"
    far = 5 * 1024**3 + 17  # past 4 GiB
    with open(path, "wb") as f:
        f.seek(far)
        f.write(b"end")
    assert os.stat(path).st_size == far + 3
    with open(path, "rb") as f:
        f.seek(far - 10)
        assert f.read() == bytes(10) + b"end"
        f.seek(CHUNK_SIZE * 3 - 5)
        assert f.read(10) == bytes(10)
    assert os.stat(path).st_blocks * 512 < 2 * CHUNK_SIZE


def make_tree(root):
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "a.txt").write_text("alpha\n" * 1000)
    (root / "dir" / "sub" / "b.bin").write_bytes(os.urandom(3 * MiB))
    (root / "dir" / "empty").write_bytes(b"")
    os.symlink("a.txt", root / "dir" / "link-to-a")
    os.symlink("/nowhere/at/all", root / "dir" / "dangling")
    os.link(root / "dir" / "a.txt", root / "dir" / "hard-a")
    os.chmod(root / "dir" / "sub" / "b.bin", 0o640)
    os.chmod(root / "dir" / "sub", 0o750)
    os.mkfifo(root / "dir" / "fifo")
    os.utime(root / "dir" / "a.txt", ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))


def test_cp_and_rsync_of_a_tree(cluster, tmp_path):
    source = tmp_path / "tree"
    source.mkdir()
    make_tree(source)
    subprocess.run(["cp", "-a", str(source / "dir"), str(cluster.mnt / "cp-copy")], check=True)
    assert subprocess.run(["diff", "-r", "--no-dereference", "--exclude=fifo", str(source / "dir"), str(cluster.mnt / "cp-copy")],
                          capture_output=True).returncode == 0
    copy = cluster.mnt / "cp-copy"
    assert os.stat(copy / "a.txt").st_ino == os.stat(copy / "hard-a").st_ino
    assert os.stat(copy / "a.txt").st_nlink == 2
    assert stat.S_IMODE(os.stat(copy / "sub").st_mode) == 0o750
    assert os.readlink(copy / "dangling") == "/nowhere/at/all"
    assert stat.S_ISFIFO(os.lstat(copy / "fifo").st_mode)
    assert os.stat(copy / "a.txt").st_mtime_ns == 1_000_000_000_123_456_789

    subprocess.run(["rsync", "-aH", str(source / "dir") + "/", str(cluster.mnt / "rsync-copy") + "/"], check=True)
    assert subprocess.run(["diff", "-r", "--no-dereference", "--exclude=fifo", str(source / "dir"), str(cluster.mnt / "rsync-copy")],
                          capture_output=True).returncode == 0
    again = subprocess.run(["rsync", "-aHi", str(source / "dir") + "/", str(cluster.mnt / "rsync-copy") + "/"],
                           check=True, capture_output=True, text=True)
    assert again.stdout == "", again.stdout


def test_tar_round_trip(cluster, tmp_path):
    source = tmp_path / "tree"
    source.mkdir()
    make_tree(source)
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", str(source), "-cf", str(archive), "dir"], check=True)
    (cluster.mnt / "untar").mkdir()
    subprocess.run(["tar", "-C", str(cluster.mnt / "untar"), "-xf", str(archive)], check=True)
    subprocess.run(["tar", "-C", str(cluster.mnt / "untar"), "-cf", str(tmp_path / "t2.tar"), "dir"], check=True)
    (tmp_path / "again").mkdir()
    subprocess.run(["tar", "-C", str(tmp_path / "again"), "-xf", str(tmp_path / "t2.tar")], check=True)
    assert subprocess.run(["diff", "-r", "--no-dereference", "--exclude=fifo", str(source / "dir"),
                           str(tmp_path / "again" / "dir")]).returncode == 0
    again = tmp_path / "again" / "dir"
    assert os.stat(again / "a.txt").st_ino == os.stat(again / "hard-a").st_ino
    assert os.stat(again / "a.txt").st_mtime_ns // 10**9 == 1_000_000_000


def test_bad_names_and_non_empty_directories_get_their_errno(cluster):
    with pytest.raises(OSError) as info:
        open(cluster.mnt / ("x" * 256), "w")
    assert info.value.errno == errno.ENAMETOOLONG
    (cluster.mnt / "full").mkdir()
    (cluster.mnt / "full" / "f").write_text("x")
    with pytest.raises(OSError) as info:
        os.rmdir(cluster.mnt / "full")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(cluster.mnt / "full")
    with pytest.raises(FileNotFoundError):
        os.stat(cluster.mnt / "missing")
    with pytest.raises(NotADirectoryError):
        os.listdir(cluster.mnt / "full" / "f")
    with pytest.raises(OSError) as info:
        os.rename(cluster.mnt / "full", cluster.mnt / "full" / "inside")
    assert info.value.errno == errno.EINVAL


def test_rename_over_existing_files_and_directories(cluster):
    m = cluster.mnt
    (m / "ra").write_text("a")
    (m / "rb").write_text("b")
    os.rename(m / "ra", m / "rb")
    assert (m / "rb").read_text() == "a" and not (m / "ra").exists()
    (m / "d1").mkdir()
    (m / "d1" / "x").write_text("x")
    (m / "d2").mkdir()
    os.rename(m / "d1", m / "d2")
    assert (m / "d2" / "x").read_text() == "x"
    (m / "d3").mkdir()
    (m / "d3" / "y").write_text("y")
    with pytest.raises(OSError) as info:
        os.rename(m / "d2", m / "d3")
    assert info.value.errno == errno.ENOTEMPTY


def test_xattrs_and_statfs(cluster):
    path = cluster.mnt / "xattr-file"
    path.write_text("x")
    os.setxattr(path, "user.colour", b"blue")
    assert os.getxattr(path, "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(path)
    os.removexattr(path, "user.colour")
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.colour")
    assert info.value.errno == errno.ENODATA
    st = os.statvfs(cluster.mnt)
    assert st.f_blocks > 0 and st.f_bavail > 0 and st.f_namemax == 255


def test_status_counts_files_and_chunks(cluster):
    (cluster.mnt / "counted").write_bytes(os.urandom(CHUNK_SIZE + 1))
    status = cluster.status()
    assert sum(s["alive"] for s in status["servers"]) == 3
    assert status["files"] >= 1 and status["chunks"] >= 2
    assert status["chunks_under_goal"] == 0
