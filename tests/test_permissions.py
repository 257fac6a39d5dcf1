"""Permissions as on ext4 for a user with supplementary groups: ownership changes, setuid and
setgid clearing, setgid directories, sticky directories, access(). The same tree is prepared
on chunkfs and on the local disk, the same unprivileged user acts in both, the outcomes must
be the same (tests/permission_scenario.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("permission_scenario.py")
USER, GROUP, SUPPLEMENTARY, FOREIGN, OTHER_USER = 1000, 1000, 2001, 2002, 1001
PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def prepare(root: Path) -> None:
    """The tree, made as root."""
    def file(name: str, mode: int, uid: int = USER, gid: int = GROUP, data: bytes = b"data") -> None:
        path = root / name
        path.write_bytes(data)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    def directory(name: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        (root / name).mkdir()
        os.chown(root / name, uid, gid)
        os.chmod(root / name, mode)

    os.chmod(root, 0o777)
    file("mine", 0o644)
    file("theirs", 0o644, uid=OTHER_USER, gid=OTHER_USER)
    file("suid-chgrp", 0o6755)
    file("suid-write", 0o4777)
    file("sgid-write", 0o2777)
    file("suid-trunc", 0o4777)
    file("suid-truncate", 0o4777)
    file("foreign-group", 0o755, gid=FOREIGN)
    file("group-r", 0o040, uid=OTHER_USER, gid=SUPPLEMENTARY)
    file("group-rw", 0o070, uid=OTHER_USER, gid=SUPPLEMENTARY)
    file("other-r", 0o604, uid=OTHER_USER, gid=FOREIGN)
    file("other-rw", 0o666, uid=OTHER_USER, gid=FOREIGN)
    file("foreign-group-r", 0o040, uid=OTHER_USER, gid=FOREIGN)
    file("owner-none", 0o077)  # the owner class wins even when it grants nothing
    directory("sgid-dir", 0o2777, gid=SUPPLEMENTARY)
    directory("sticky", 0o1777)
    file("sticky/theirs", 0o666, uid=OTHER_USER, gid=OTHER_USER)
    file("sticky/mine", 0o644)
    file("sticky/mine2", 0o644)
    directory("open", 0o777)
    file("open/theirs", 0o644, uid=OTHER_USER, gid=OTHER_USER)
    directory("group-dir", 0o070, uid=OTHER_USER, gid=SUPPLEMENTARY)
    file("group-dir/inside", 0o644, uid=OTHER_USER, gid=SUPPLEMENTARY)
    directory("no-x", 0o776, uid=USER, gid=GROUP)
    file("no-x/inside", 0o644)


def run_scenario(root: Path) -> dict:
    # the script comes on stdin and the tree is the working directory: the user need not be
    # able to reach either by path (pytest's temporary directories are root's alone)
    result = subprocess.run([PYTHON, "-", "."], input=SCENARIO.read_text(), capture_output=True, text=True,
                            timeout=60, cwd=root, user=USER, group=GROUP, extra_groups=[SUPPLEMENTARY])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def trees(cluster, tmp_path):
    fs_root = cluster.mnt / "permissions"
    ref_root = tmp_path / "permissions"
    for root in (fs_root, ref_root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
    yield fs_root, ref_root
    shutil.rmtree(fs_root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or PYTHON is None, reason="needs root (to act as other users) and python3")
def test_permissions_match_a_local_filesystem(trees):
    fs_root, ref_root = trees
    for root in trees:
        prepare(root)
    chunkfs, local = run_scenario(fs_root), run_scenario(ref_root)
    differences = {k: {"chunkfs": chunkfs.get(k), "local": local.get(k)}
                   for k in sorted(set(chunkfs) | set(local)) if chunkfs.get(k) != local.get(k)}
    assert differences == {}, json.dumps(differences, indent=1)
    assert local["chgrp to a supplementary group"] == ["ok", None]  # the scenario means what it says
    assert local["access group-r R"] and not local["access foreign-group-r R"]
