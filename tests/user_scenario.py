"""Shared by the tests that compare chunkfs with the local disk as an unprivileged user
(test_permissions.py, test_acl.py): the same tree on both, a scenario script run in each as
uid 1000 with groups 1000 (primary) and 2001 (supplementary), the outcomes compared."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

USER, GROUP, SUPPLEMENTARY, FOREIGN, OTHER_USER = 1000, 1000, 2001, 2002, 1001
PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def run_scenario(script: Path, root: Path) -> dict:
    """The script's JSON outcomes. It comes on stdin and the tree is the working directory: the
    user need not be able to reach either by path (pytest's temporary directories are root's)."""
    result = subprocess.run([PYTHON, "-", "."], input=script.read_text(), capture_output=True, text=True,
                            timeout=60, cwd=root, user=USER, group=GROUP, extra_groups=[SUPPLEMENTARY])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def differences(chunkfs: dict, local: dict) -> dict:
    return {key: {"chunkfs": chunkfs.get(key), "local": local.get(key)}
            for key in sorted(set(chunkfs) | set(local)) if chunkfs.get(key) != local.get(key)}


def twin_trees(cluster_mnt: Path, tmp_path: Path, name: str):
    """A fresh directory `name` on the mount and on the local disk; the mount's is removed after."""
    fs_root, ref_root = cluster_mnt / name, tmp_path / name
    for root in (fs_root, ref_root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
    yield fs_root, ref_root
    shutil.rmtree(fs_root, ignore_errors=True)
