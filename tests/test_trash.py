"""The trash, as a user meets it on a cluster started as `chunkfs up` starts one (24 h of trash):
`rm` and a rename over a file keep it, `chunkfs trash list/restore/purge` and `trash-time` work
on it, and expiry frees its chunks. Restores against a model: tests/test_quotas.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import _cluster, chunkfs, wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from _cluster(tmp_path_factory, up_options=("--trash-time-s", "86400"))


@pytest.fixture
def home(cluster, request):
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=cluster.mnt))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def in_trash(cluster, path: Path | None = None) -> dict[str, dict]:
    """Path as it was (from the cluster's root) -> the trash's entry, of the files removed below `path`."""
    args = ("trash", "list", *((path,) if path is not None else ()), "--dir", cluster.dir, "--json")
    return {item["path"]: item for item in json.loads(chunkfs(*args).stdout)}


def cluster_path(cluster, path: Path) -> str:
    return "/" + str(path.relative_to(cluster.mnt))


def test_a_removed_file_is_listed_and_restored_with_its_content(cluster, home):
    data = os.urandom(5 * MiB + 123)
    (home / "doc").write_bytes(data)
    os.unlink(home / "doc")
    assert not (home / "doc").exists()
    item = in_trash(cluster, home)[cluster_path(cluster, home / "doc")]
    assert item["size"] == len(data)
    assert item["expires_ns"] - item["deleted_ns"] == 86400 * 10**9
    chunkfs("trash", "restore", item["id"], "--dir", cluster.dir)
    wait_until(lambda: (home / "doc").exists(), 10, "the restored file seen by the mount")
    assert (home / "doc").read_bytes() == data
    assert cluster_path(cluster, home / "doc") not in in_trash(cluster, home)
    fsck = json.loads(chunkfs("fsck", "--dir", cluster.dir, "--json", check=False).stdout)
    assert fsck["exit_code"] == 0, fsck


def test_a_file_replaced_by_a_rename_is_kept_and_restored_elsewhere(cluster, home):
    (home / "report").write_bytes(b"old version")
    (home / "report.tmp").write_bytes(b"new version")
    os.rename(home / "report.tmp", home / "report")  # how editors and rsync overwrite
    item = in_trash(cluster, home)[cluster_path(cluster, home / "report")]
    taken = chunkfs("trash", "restore", item["id"], "--dir", cluster.dir, check=False)
    assert taken.returncode == 1 and "exists" in taken.stderr  # EEXIST: nothing replaced
    assert (home / "report").read_bytes() == b"new version"
    chunkfs("trash", "restore", item["id"], "--to", home / "report.old")
    wait_until(lambda: (home / "report.old").exists(), 10, "the restored file seen by the mount")
    assert (home / "report.old").read_bytes() == b"old version"


def test_trash_time_is_inherited_and_zero_frees_at_once(cluster, home):
    (home / "scratch").mkdir()
    chunkfs("trash-time", home / "scratch", "0")
    (home / "scratch" / "sub").mkdir()  # made after: takes the setting
    assert json.loads(chunkfs("trash-time", home / "scratch" / "sub", "--json").stdout)["trash_time_s"] == 0
    assert json.loads(chunkfs("trash-time", home, "--json").stdout)["trash_time_s"] == 86400
    (home / "scratch" / "sub" / "f").write_bytes(b"x")
    os.unlink(home / "scratch" / "sub" / "f")
    assert cluster_path(cluster, home / "scratch" / "sub" / "f") not in in_trash(cluster)
    assert chunkfs("trash-time", home, "1x", check=False).returncode == 2  # not a duration


def test_expiry_frees_the_chunks(cluster, home):
    (home / "brief").mkdir()
    chunkfs("trash-time", home / "brief", "10s")
    (home / "brief" / "f").write_bytes(os.urandom(2 * MiB))
    chunks_with_it = cluster.status()["chunks"]
    os.unlink(home / "brief" / "f")
    assert cluster_path(cluster, home / "brief" / "f") in in_trash(cluster)  # kept, with its chunk, for now
    wait_until(lambda: cluster_path(cluster, home / "brief" / "f") not in in_trash(cluster), 60,
               "the file freed once its 10 s in the trash ran out")
    wait_until(lambda: cluster.status()["chunks"] < chunks_with_it and cluster.status()["pending_deletions"] == 0,
               60, "its chunk deleted on the chunkservers")


def test_an_open_file_removed_stays_readable_and_restorable(cluster, home):
    (home / "open").write_bytes(b"still here")
    with open(home / "open", "rb") as f:
        os.unlink(home / "open")
        item = in_trash(cluster, home)[cluster_path(cluster, home / "open")]
        assert f.read() == b"still here"
    assert chunkfs("trash", "list", home, "--dir", cluster.dir, "--json").returncode == 0
    chunkfs("trash", "restore", item["id"], "--dir", cluster.dir)
    wait_until(lambda: (home / "open").exists(), 10, "the restored file seen by the mount")
    assert (home / "open").read_bytes() == b"still here"


def test_purge_frees_now_and_bad_ids_fail(cluster, home):
    (home / "gone").write_bytes(b"x" * 1000)
    os.unlink(home / "gone")
    item = in_trash(cluster, home)[cluster_path(cluster, home / "gone")]
    assert json.loads(chunkfs("trash", "purge", item["id"], "--dir", cluster.dir, "--json").stdout) == {"freed": 1}
    assert cluster_path(cluster, home / "gone") not in in_trash(cluster)
    again = chunkfs("trash", "purge", item["id"], "--dir", cluster.dir, check=False)
    assert again.returncode == 1 and "trash" in again.stderr
    assert chunkfs("trash", "restore", item["id"], "--dir", cluster.dir, check=False).returncode == 1
    assert chunkfs("trash", "purge", "--dir", cluster.dir, check=False).returncode == 1  # neither ids nor --all
