"""chunkfs:// through fsspec, with no mount in the way: fsspec.open, pandas, pyarrow's parquet,
and fsspec's own abstract test suite, against a real cluster (`cluster` of conftest). The
cluster's mount is used only to check that what fsspec wrote is what every client reads.

Of `fsspec.tests.abstract` the copy, get, put, open and pipe classes run here: they are the
whole of the suite's per-filesystem classes in this fsspec (the mv tests there are module-level
functions on the local filesystem, not a class to subclass).
"""

from __future__ import annotations

import errno
import os
import posixpath
import uuid

import fsspec
import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.tests.abstract import (AbstractCopyTests, AbstractFixtures, AbstractGetTests, AbstractOpenTests,
                                   AbstractPipeTests, AbstractPutTests)

from chunkfs.fsspec_fs import ChunkfsFileSystem
from conftest import wait_until


@pytest.fixture(scope="module")
def storage_options(cluster):
    return {"secret_file": str(cluster.secret_file)}


@pytest.fixture(scope="module")
def chunkfs_fs(cluster, storage_options):
    fs = fsspec.filesystem("chunkfs", address=cluster.metaserver, **storage_options)
    yield fs
    fs.client.close()
    ChunkfsFileSystem.clear_instance_cache()


@pytest.fixture
def base(chunkfs_fs):
    """A directory of this test's own on the cluster, removed after it."""
    path = f"/fsspec-{uuid.uuid4().hex[:8]}"
    chunkfs_fs.makedirs(path)
    yield path
    if chunkfs_fs.exists(path):
        chunkfs_fs.rm(path, recursive=True)


def url(cluster, path: str) -> str:
    return f"chunkfs://{cluster.metaserver}{path}"


def test_the_protocol_is_registered():
    assert fsspec.get_filesystem_class("chunkfs") is ChunkfsFileSystem


def test_fsspec_open_writes_what_the_mount_reads(cluster, storage_options, base):
    data = os.urandom(5 * 1024 * 1024 + 17)  # more than a chunk and a block
    with fsspec.open(url(cluster, f"{base}/blob.bin"), "wb", **storage_options) as f:
        f.write(data)
    with fsspec.open(url(cluster, f"{base}/blob.bin"), "rb", **storage_options) as f:
        assert f.read() == data
        f.seek(4 * 1024 * 1024 - 3)
        assert f.read(10) == data[4 * 1024 * 1024 - 3:4 * 1024 * 1024 + 7]
    on_mount = cluster.mnt / base.lstrip("/") / "blob.bin"
    wait_until(on_mount.exists, 10, "the file shows on the mount")
    assert on_mount.read_bytes() == data


def test_secret_from_the_environment(cluster, monkeypatch, base, chunkfs_fs):
    chunkfs_fs.pipe_file(f"{base}/env.txt", b"from env")
    ChunkfsFileSystem.clear_instance_cache()
    monkeypatch.setenv("CHUNKFS_SECRET_FILE", str(cluster.secret_file))
    with fsspec.open(url(cluster, f"{base}/env.txt"), "rb") as f:
        assert f.read() == b"from env"


def test_a_wrong_secret_is_refused(cluster, tmp_path):
    wrong = tmp_path / "secret"
    wrong.write_text("0" * 64 + "\n")
    with pytest.raises(PermissionError) as raised:
        fsspec.filesystem("chunkfs", address=cluster.metaserver, secret_file=str(wrong), skip_instance_cache=True)
    assert raised.value.errno == errno.EACCES


def test_namespace_operations(chunkfs_fs, base, cluster):
    fs = chunkfs_fs
    fs.pipe(f"{base}/a/b/c.txt", b"hello")
    assert fs.cat(f"{base}/a/b/c.txt") == b"hello"
    assert fs.ls(f"{base}/a", detail=False) == [f"{base}/a/b"]
    info = fs.info(f"{base}/a/b/c.txt")
    assert (info["type"], info["size"]) == ("file", 5)
    assert fs.info(f"{base}/a")["type"] == "directory"
    assert fs.modified(f"{base}/a/b/c.txt").timestamp() == pytest.approx(info["mtime"])
    assert fs.created(f"{base}/a/b/c.txt").tzinfo is not None
    fs.mv(f"{base}/a/b/c.txt", f"{base}/a/d.txt")
    assert fs.find(base) == [f"{base}/a/d.txt"]
    fs.cp_file(f"{base}/a/d.txt", f"{base}/e.txt")
    assert fs.cat(f"{base}/e.txt") == b"hello"
    fs.mkdir(f"{base}/new/deeper")
    assert fs.isdir(f"{base}/new/deeper")
    with pytest.raises(FileExistsError):
        fs.makedirs(f"{base}/new")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{base}/missing")
    fs.rm(f"{base}/a", recursive=True)
    assert not fs.exists(f"{base}/a")
    assert sorted(fs.ls(base, detail=False)) == [f"{base}/e.txt", f"{base}/new"]


def test_pandas_csv_round_trip(cluster, storage_options, base):
    frame = pandas.DataFrame({"city": ["Oslo", "Lima", "Pune"], "people": [709_000, 10_000_000, 7_400_000]})
    frame.to_csv(url(cluster, f"{base}/cities.csv"), index=False, storage_options=storage_options)
    back = pandas.read_csv(url(cluster, f"{base}/cities.csv"), storage_options=storage_options)
    pandas.testing.assert_frame_equal(back, frame)
    on_mount = cluster.mnt / base.lstrip("/") / "cities.csv"
    wait_until(on_mount.exists, 10, "the CSV shows on the mount")
    pandas.testing.assert_frame_equal(pandas.read_csv(on_mount), frame)


def test_pyarrow_parquet_round_trip(chunkfs_fs, base):
    table = pa.table({"n": list(range(100_000)), "square": [i * i for i in range(100_000)]})
    pq.write_table(table, f"{base}/squares.parquet", filesystem=chunkfs_fs)
    assert pq.read_table(f"{base}/squares.parquet", filesystem=chunkfs_fs).equals(table)
    assert pq.read_table(f"{base}/squares.parquet", filesystem=chunkfs_fs, columns=["square"]).column(0)[99_999].as_py() \
        == 99_999 ** 2


class ChunkfsFixtures(AbstractFixtures):
    """fsspec's abstract tests on a directory of their own on the cluster."""

    @pytest.fixture
    def fs(self, chunkfs_fs):
        return chunkfs_fs

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self, base):
        return base


class TestChunkfsCopy(ChunkfsFixtures, AbstractCopyTests):
    pass


class TestChunkfsGet(ChunkfsFixtures, AbstractGetTests):
    pass


class TestChunkfsPut(ChunkfsFixtures, AbstractPutTests):
    pass


class TestChunkfsOpen(ChunkfsFixtures, AbstractOpenTests):
    pass


class TestChunkfsPipe(ChunkfsFixtures, AbstractPipeTests):
    pass
