"""The file commands as a script uses them: the real `chunkfs` console script in a subprocess,
straight to a real cluster (no mount in between), its mount used only to check that every client
sees the same files. Exit codes: 1 an operation failed, 2 usage, 3 cluster unusable, 130 Ctrl-C."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import free_port_block, sigint_as_at_a_terminal, wait_until

CHUNKFS_SCRIPT = str(Path(sys.executable).parent / "chunkfs")
MiB = 1024 * 1024


def run(cluster, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`chunkfs ARGS --dir <the cluster's>`: the cluster is found as for `chunkfs up`'s user."""
    result = subprocess.run([CHUNKFS_SCRIPT, *map(str, args), "--dir", str(cluster.dir)],
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"chunkfs {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def remote(cluster):
    """A cluster directory name of this test's own (not made yet)."""
    name = f"/cli-{uuid.uuid4().hex[:8]}"
    yield name
    run(cluster, "rm", "-r", "-f", name, check=False)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_put_get_round_trip_and_the_mounts_view(cluster, remote, tmp_path):
    big = random_file(tmp_path / "big.iso", 9 * MiB + 4321)  # two whole chunks and a part
    run(cluster, "put", big, f"{remote}/iso/")
    run(cluster, "get", f"{remote}/iso/big.iso", tmp_path / "back.iso")
    assert filecmp.cmp(big, tmp_path / "back.iso", shallow=False)
    on_mount = cluster.mnt / remote.lstrip("/") / "iso" / "big.iso"
    wait_until(on_mount.exists, 10, "the file shows on the mount")
    assert filecmp.cmp(big, on_mount, shallow=False)
    cat = subprocess.run([CHUNKFS_SCRIPT, "cat", f"{remote}/iso/big.iso", "--dir", str(cluster.dir)],
                         capture_output=True, timeout=120, check=True)
    assert cat.stdout == big.read_bytes()


def test_ls_size_rm(cluster, remote, tmp_path):
    small = random_file(tmp_path / "small.bin", 1000)
    run(cluster, "put", small, random_file(tmp_path / "other.bin", 5 * MiB), f"{remote}/")
    long = run(cluster, "ls", "-l", remote).stdout.splitlines()
    assert [line.split()[-1] for line in long] == ["other.bin", "small.bin"]
    assert long[1].startswith("-rw-") and " 1000 " in long[1]
    listing = json.loads(run(cluster, "ls", "--json", remote).stdout)
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [("other.bin", "file", 5 * MiB),
                                                                      ("small.bin", "file", 1000)]
    assert run(cluster, "size", f"{remote}/small.bin").stdout == "1000\n"
    assert run(cluster, "size", "-h", f"{remote}/other.bin").stdout == "5.0 MiB\n"
    assert json.loads(run(cluster, "size", "--json", remote).stdout) == [{"path": remote, "bytes": 5 * MiB + 1000}]
    run(cluster, "rm", f"{remote}/small.bin")
    assert [e["name"] for e in json.loads(run(cluster, "ls", "--json", remote).stdout)] == ["other.bin"]
    refused = run(cluster, "rm", remote, check=False)
    assert (refused.returncode, refused.stderr) == (1, f"chunkfs: rm: {remote}: Is a directory (use -r)\n")
    run(cluster, "rm", "-r", remote)
    gone = run(cluster, "ls", remote, check=False)
    assert (gone.returncode, gone.stderr) == (1, f"chunkfs: ls: {remote}: No such file or directory\n")


def test_many_files_in_parallel_both_ways(cluster, remote, tmp_path):
    tree = tmp_path / "tree"
    for i in range(12):
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        random_file(tree / f"d{i % 3}" / f"f{i}", 1000 * i + (5 * MiB if i == 7 else 0))
    (tree / "empty").mkdir()
    done = json.loads(run(cluster, "put", "-r", "-j", "6", "--json", tree, remote).stdout)
    assert len(done["copied"]) == 12 and done["failed"] == []
    on_mount = cluster.mnt / remote.lstrip("/")
    wait_until(lambda: (on_mount / "d1" / "f7").exists(), 10, "the tree shows on the mount")
    comparison = filecmp.dircmp(tree, on_mount)
    assert not comparison.left_only and not comparison.right_only
    run(cluster, "get", "-r", "-j", "6", remote, tmp_path / "back")
    for i in range(12):
        path = Path(f"d{i % 3}") / f"f{i}"
        assert filecmp.cmp(tree / path, tmp_path / "back" / path, shallow=False), path
    assert (tmp_path / "back" / "empty").is_dir()


def test_mkdir_and_mv(cluster, remote):
    missing = run(cluster, "mkdir", f"{remote}/a/b", check=False)
    assert (missing.returncode, missing.stderr) == (1, f"chunkfs: mkdir: {remote}/a/b: No such file or directory\n")
    run(cluster, "mkdir", "-p", f"{remote}/a/b")
    run(cluster, "mkdir", "-p", f"{remote}/a/b")  # already there: no error with -p
    exists = run(cluster, "mkdir", f"{remote}/a", check=False)
    assert (exists.returncode, exists.stderr) == (1, f"chunkfs: mkdir: {remote}/a: File exists\n")
    run(cluster, "mkdir", f"{remote}/c")
    run(cluster, "mv", f"{remote}/a", f"{remote}/c")  # into an existing directory
    run(cluster, "mv", f"{remote}/c/a/b", f"{remote}/z")
    assert [e["path"] for e in json.loads(run(cluster, "ls", "--json", remote).stdout)] == [f"{remote}/c",
                                                                                             f"{remote}/z"]


def test_failures_are_one_line_each_and_exit_1(cluster, remote, tmp_path):
    present = random_file(tmp_path / "present", 10)
    put = run(cluster, "put", tmp_path / "absent", present, f"{remote}/", check=False)
    assert put.returncode == 1
    assert put.stderr == f"chunkfs: put: {tmp_path / 'absent'}: No such file or directory\n"
    assert json.loads(run(cluster, "ls", "--json", remote).stdout)[0]["name"] == "present"  # the others go on
    get = run(cluster, "get", f"{remote}/nothing", tmp_path / "x", check=False)
    assert (get.returncode, get.stderr) == (1, f"chunkfs: get: {remote}/nothing: No such file or directory\n")
    cat = run(cluster, "cat", f"{remote}/nothing", check=False)
    assert (cat.returncode, cat.stderr) == (1, f"chunkfs: cat: {remote}/nothing: No such file or directory\n")
    folder = run(cluster, "put", tmp_path, f"{remote}/", check=False)
    assert (folder.returncode, folder.stderr) == (1, f"chunkfs: put: {tmp_path}: Is a directory (use -r)\n")
    assert run(cluster, "put", present, check=False).returncode == 2
    assert run(cluster, "ls", "--no-such-flag", check=False).returncode == 2


@pytest.fixture
def world_readable(tmp_path_factory):
    """A directory everyone may read (pytest's own are root's alone), removed after the test."""
    path = tmp_path_factory.mktemp("shared")
    for p in (path, *path.parents):
        if p == Path("/tmp") or p == Path("/"):
            break
        p.chmod(0o755)
    return path


def test_permission_denied_is_exit_1_naming_the_path(cluster, remote, world_readable):
    """As an unprivileged user (the API acts as the calling user, as a mount does) in a
    directory of root's."""
    secret = world_readable / "secret"
    secret.write_bytes(cluster.secret_file.read_bytes())
    secret.chmod(0o644)
    local = random_file(world_readable / "mine", 100)
    local.chmod(0o644)
    run(cluster, "mkdir", remote)
    as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CHUNKFS_SCRIPT,
                                "put", str(local), f"{remote}/", "--metaserver", cluster.metaserver,
                                "--secret-file", str(secret)], capture_output=True, text=True, timeout=120)
    assert (as_nobody.returncode, as_nobody.stderr) == (1, f"chunkfs: put: {remote}/mine: Permission denied\n")
    assert json.loads(run(cluster, "ls", "--json", remote).stdout) == []


def test_wrong_secret_exits_3(cluster, tmp_path):
    wrong = tmp_path / "secret"
    wrong.write_text("0" * 64 + "\n")
    result = run(cluster, "ls", "/", "--secret-file", wrong, check=False)
    assert result.returncode == 3
    assert result.stderr.startswith("chunkfs: ls: cannot use the cluster at ") and len(result.stderr.splitlines()) == 1
    missing = run(cluster, "ls", "/", "--secret-file", tmp_path / "none", check=False)
    assert missing.returncode == 3 and "cannot read the cluster secret" in missing.stderr


def test_cluster_down_exits_3_after_retry_s(cluster, tmp_path):
    nobody_there = f"127.0.0.1:{free_port_block(1)}"
    local = random_file(tmp_path / "f", 10)
    result = run(cluster, "put", local, "/f", "--metaserver", nobody_there, "--secret-file", cluster.secret_file,
                 "--retry-s", "2", check=False, timeout=60)
    assert result.returncode == 3
    assert result.stderr.startswith(f"chunkfs: put: cannot use the cluster at {nobody_there}: ")


def _bytes_read(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def test_ctrl_c_during_put_leaves_nothing_under_the_target(cluster, remote, tmp_path):
    big = random_file(tmp_path / "big", 400 * MiB)
    run(cluster, "mkdir", remote)
    put = subprocess.Popen([CHUNKFS_SCRIPT, "put", str(big), f"{remote}/big", "--dir", str(cluster.dir)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=sigint_as_at_a_terminal)
    try:
        wait_until(lambda: put.poll() is not None or _bytes_read(put.pid) > 24 * MiB, 60, "the put is under way")
        assert put.poll() is None, f"the put ended before it was interrupted: {put.stderr.read()}"
        put.send_signal(signal.SIGINT)
        _out, err = put.communicate(timeout=120)
    finally:
        if put.poll() is None:
            put.kill()
            put.wait()
    assert put.returncode == 130, err
    assert err.strip().endswith("chunkfs: put: interrupted")
    assert json.loads(run(cluster, "ls", "--json", remote).stdout) == []  # no target, no temporary left
    assert not (cluster.mnt / remote.lstrip("/") / "big").exists()
