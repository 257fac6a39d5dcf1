"""The LMDB map is sized by the operator: a full map is ENOSPC to callers (not a crash or a 500),
and the map grows while serving, at a moment no transaction is open (SIGHUP on the daemon)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys

import httpx
import pytest

from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, u64
from conftest import free_port_block, metrics_of, wait_until

MiB = 1 << 20


def test_a_full_map_is_enospc_and_growing_it_lets_changes_go_on(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=2 * MiB)
    committer = GroupCommitter(db)

    def put(txn, i):
        txn.put(u64(i), os.urandom(64 * 1024), db=db.inodes)

    async def fill() -> int:
        for i in range(100):
            try:
                await committer.run(put, i)
            except FsError as exc:
                assert exc.errno == errno.ENOSPC
                return i
        raise AssertionError("a 2 MiB map took 100 values of 64 KiB")

    try:
        stored = asyncio.run(fill())
        with db.read():  # an open transaction: the map cannot change under it
            assert not db.grow_map(8 * MiB, timeout_s=0.2)
        assert db.grow_map(8 * MiB, timeout_s=5) and db.map_size_bytes() == 8 * MiB
        asyncio.run(committer.run(put, stored))  # what failed now fits
        with db.read() as txn:
            assert txn.get(u64(stored), db=db.inodes) is not None
    finally:
        committer.stop()
        db.close()


@pytest.fixture
def metaserver(tmp_path):
    """A lone metaserver started from a config file with a 16 MiB map."""
    port = free_port_block(1)
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    config = tmp_path / "metaserver.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "meta"}"\n'
                      f'secret_file = "{secret}"\nmap_size_gib = 0.015625\n')
    proc = subprocess.Popen([sys.executable, "-m", "chunkfs.metaserver.main", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: ok(f"http://127.0.0.1:{port}/health"), 30, "the metaserver answers")
        yield proc, config, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ok(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_sighup_grows_the_map_of_a_running_metaserver(metaserver):
    proc, config, address = metaserver
    map_bytes = lambda: metrics_of(address)["chunkfs_metaserver_memory_lmdb_map_bytes"]
    assert map_bytes() == 16 * MiB
    config.write_text(config.read_text().replace("map_size_gib = 0.015625", "map_size_gib = 0.03125"))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: map_bytes() == 32 * MiB, 30, "the map grown to 32 MiB")
    assert proc.poll() is None
