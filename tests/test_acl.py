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

SCENARIO = Path(__file__).with_name("acl_scenario.py")
USER, GROUP, SUPPLEMENTARY, OTHER_USER = 1000, 1000, 2001, 1001
PYTHON = shutil.which("python3", path="/usr/bin:/bin")
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


def run_scenario(root: Path) -> dict:
    result = subprocess.run([PYTHON, "-", "."], input=SCENARIO.read_text(), capture_output=True, text=True,
                            timeout=60, cwd=root, user=USER, group=GROUP, extra_groups=[SUPPLEMENTARY])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def trees(cluster, tmp_path):
    fs_root, ref_root = cluster.mnt / "acl", tmp_path / "acl"
    for root in (fs_root, ref_root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
    yield fs_root, ref_root
    shutil.rmtree(fs_root, ignore_errors=True)


def test_acls_are_kept_enforced_and_inherited_as_on_ext4(trees):
    fs_root, ref_root = trees
    for root in trees:
        prepare(root)
    assert getfacl(fs_root) == getfacl(ref_root)
    chunkfs, local = run_scenario(fs_root), run_scenario(ref_root)
    differences = {k: {"chunkfs": chunkfs.get(k), "local": local.get(k)}
                   for k in sorted(set(chunkfs) | set(local)) if chunkfs.get(k) != local.get(k)}
    assert differences == {}, json.dumps(differences, indent=1)
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
