"""POSIX ACLs as on ext4: setfacl/getfacl work, the kernel enforces them (named users and
groups, the mask), chmod and the ACL stay in step, and default ACLs are inherited by new files
and directories. The same tree is made on chunkfs and on the local disk and compared."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import chunkfs, wait_until
from user_scenario import GROUP, OTHER_USER, PYTHON, SUPPLEMENTARY, USER, differences, run_scenario, twin_trees

SCENARIO = Path(__file__).with_name("acl_scenario.py")
SETFACL, GETFACL = shutil.which("setfacl"), shutil.which("getfacl")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not (PYTHON and SETFACL and GETFACL),
                                reason="needs root, python3 and the acl tools")


def setfacl(root: Path, *args: str) -> None:
    subprocess.run([SETFACL, *args], cwd=root, check=True, capture_output=True, timeout=30)


def getfacl(root: Path) -> str:
    """Every entry's ACL (numeric ids, relative paths, sorted), as getfacl prints it."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_symlink())
    result = subprocess.run([GETFACL, "-n", "-p", "-P", *names], cwd=root, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def prepare(root: Path) -> None:
    def file(name: str, mode: int, uid: int = OTHER_USER, gid: int = OTHER_USER) -> None:
        (root / name).write_bytes(b"data")
        os.chown(root / name, uid, gid)
        os.chmod(root / name, mode)

    os.chmod(root, 0o777)
    (root / "shared").mkdir()
    os.chown(root / "shared", OTHER_USER, OTHER_USER)
    os.chmod(root / "shared", 0o770)
    setfacl(root, "-m", f"u:{USER}:rwx", "shared")
    file("shared/doc", 0o640)
    setfacl(root, "-m", f"u:{USER}:r", "shared/doc")
    file("denied", 0o644)
    setfacl(root, "-m", f"u:{USER}:---", "denied")
    file("grouped", 0o600)
    setfacl(root, "-m", f"g:{SUPPLEMENTARY}:rw", "grouped")
    file("masked", 0o600)
    setfacl(root, "-m", f"u:{USER}:rw,m::r", "masked")
    file("plain", 0o600)
    setfacl(root, "-m", "u::rw,g::r,o::r", "plain")  # minimal: only the mode changes
    (root / "inherit").mkdir()
    os.chmod(root / "inherit", 0o777)
    setfacl(root, "-d", "-m", f"u::rwx,g::rx,o::-,u:{OTHER_USER}:rwx,g:{SUPPLEMENTARY}:rw", "inherit")
    file("mine-acl", 0o664, uid=USER, gid=GROUP)
    setfacl(root, "-m", f"u:{OTHER_USER}:rw", "mine-acl")




@pytest.fixture
def trees(cluster, tmp_path):
    yield from twin_trees(cluster.mnt, tmp_path, "acl")


def test_acls_are_kept_enforced_and_inherited_as_on_ext4(trees):
    fs_root, ref_root = trees
    for root in trees:
        prepare(root)
    assert getfacl(fs_root) == getfacl(ref_root)
    chunkfs, local = run_scenario(SCENARIO, fs_root), run_scenario(SCENARIO, ref_root)
    found = differences(chunkfs, local)
    assert found == {}, json.dumps(found, indent=1)
    assert local["read shared/doc"][0] == "ok" and local["read denied"] == ["err", "EACCES"]
    after_fs, after_ref = getfacl(fs_root), getfacl(ref_root)
    assert after_fs == after_ref, "\n".join(difflib.unified_diff(after_ref.splitlines(), after_fs.splitlines(),
                                                                 "local", "chunkfs", lineterm=""))
    modes = lambda root: {str(p.relative_to(root)): oct(p.lstat().st_mode) for p in sorted(root.rglob("*"))}
    assert modes(fs_root) == modes(ref_root)


def test_removing_acls_and_copying_them(trees):
    fs_root, ref_root = trees
    for root in trees:
        prepare(root)
        setfacl(root, "-b", "shared")
        setfacl(root, "-k", "inherit")
        setfacl(root, "-x", f"u:{USER}", "denied")
    assert getfacl(fs_root) == getfacl(ref_root)
    copy = fs_root / "copied"
    subprocess.run(["cp", "-a", str(ref_root / "grouped"), str(copy)], check=True, timeout=30)
    assert f"group:{SUPPLEMENTARY}:rw-" in subprocess.run([GETFACL, "-n", str(copy)], capture_output=True,
                                                        text=True, timeout=30).stdout


def test_an_acl_set_on_one_client_is_enforced_on_another(cluster, tmp_path):
    from chunkfs.daemons import unmount

    other = tmp_path / "client-b"
    chunkfs("mount", cluster.metaserver, other, "--secret-file", cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-b'}")
    path = cluster.mnt / "acl-two-clients"
    try:
        path.write_bytes(b"data")
        os.chmod(path, 0o644)
        can_read = lambda: subprocess.run([PYTHON, "-c", f"open({path.name!r}).read()"], cwd=other,
                                          user=USER, group=GROUP, capture_output=True, timeout=30).returncode == 0
        assert can_read()
        setfacl(cluster.mnt, "-m", f"u:{USER}:---", path.name)
        wait_until(lambda: not can_read(), 10, "the other client denies what the new ACL denies", poll_s=0.05)
        setfacl(cluster.mnt, "-b", path.name)
        wait_until(can_read, 10, "the other client grants again what the removed ACL denied", poll_s=0.05)
    finally:
        unmount(other)
        path.unlink(missing_ok=True)


def created_with_umask(directory: Path, umask: int) -> tuple[int, str]:
    """The mode and the ACL mask of a file created with mode 0666 under `umask`."""
    old = os.umask(umask)
    try:
        os.close(os.open(directory / f"made-{umask:03o}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    finally:
        os.umask(old)
    acl = subprocess.run([GETFACL, "-n", "-c", str(directory / f"made-{umask:03o}")], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    mask = next(line for line in acl.splitlines() if line.startswith("mask::"))
    return os.stat(directory / f"made-{umask:03o}").st_mode & 0o7777, mask


def test_the_umask_also_cuts_a_new_file_under_a_default_acl(trees):
    """The documented difference (README): ext4 ignores the umask in a directory with a default
    ACL; chunkfs cannot (pyfuse3 cannot ask for FUSE_DONT_MASK), so the umask also cuts the new
    file's mode and ACL mask: more restrictive, never looser; `umask 0` gives ext4's result."""
    fs_root, ref_root = trees
    for root in trees:
        (root / "defaults").mkdir()
        setfacl(root, "-d", "-m", f"u::rwx,g::rwx,o::r-x,u:{OTHER_USER}:rwx", "defaults")
    assert created_with_umask(ref_root / "defaults", 0o022) == (0o664, "mask::rw-")
    assert created_with_umask(fs_root / "defaults", 0o022) == (0o644, "mask::r--")
    assert created_with_umask(fs_root / "defaults", 0o000) == created_with_umask(ref_root / "defaults", 0o000) \
        == (0o664, "mask::rw-")
