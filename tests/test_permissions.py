"""Permissions as on ext4 for a user with supplementary groups: ownership changes, setuid and
setgid clearing, setgid directories, sticky directories, access(). The same tree is prepared
on chunkfs and on the local disk, the same unprivileged user acts in both, the outcomes must
be the same (tests/permission_scenario.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from user_scenario import (FOREIGN, GROUP, OTHER_USER, PYTHON, SUPPLEMENTARY, USER, differences,
                           run_scenario, twin_trees)

SCENARIO = Path(__file__).with_name("permission_scenario.py")


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




@pytest.fixture
def trees(cluster, tmp_path):
    yield from twin_trees(cluster.mnt, tmp_path, "permissions")


@pytest.mark.skipif(os.geteuid() != 0 or PYTHON is None, reason="needs root (to act as other users) and python3")
def test_permissions_match_a_local_filesystem(trees):
    fs_root, ref_root = trees
    for root in trees:
        prepare(root)
    chunkfs, local = run_scenario(SCENARIO, fs_root), run_scenario(SCENARIO, ref_root)
    found = differences(chunkfs, local)
    assert found == {}, json.dumps(found, indent=1)
    assert local["chgrp to a supplementary group"] == ["ok", None]  # the scenario means what it says
    assert local["access group-r R"] and not local["access foreign-group-r R"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_chown_by_root_clears_setuid_and_setgid_as_locally(trees):
    outcomes = []
    for root in trees:
        for name, mode in (("suid", 0o6755), ("sgid-noexec", 0o2644), ("dir", 0o2755)):
            path = root / name
            path.mkdir() if name == "dir" else path.write_bytes(b"x")
            os.chmod(path, mode)
            os.chown(path, OTHER_USER, SUPPLEMENTARY)
        outcomes.append({p.name: oct(p.stat().st_mode) for p in sorted(root.iterdir())})
    assert outcomes[0] == outcomes[1]
