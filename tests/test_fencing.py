"""A chunkserver obeys only the newest primary metaserver (chunkfs/chunkserver/fencing.py): a
DELETE or copy signed by a metaserver with an older epoch than one it has seen is refused, and
the version stays. The whole failover, where the chunkservers learn the epoch from their
heartbeats' answers: tests/test_netns_failover.py."""

from __future__ import annotations

import errno
import json
import urllib.request

import pytest
import trio

from chunkfs import auth
from chunkfs.checksum import chunk_checksum
from chunkfs.daemons import answers_health, module_command, spawn, stop_pid
from chunkfs.errors import FsError
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp
from conftest import free_port_block, wait_until


@pytest.fixture
def chunkserver(tmp_path):
    """A chunkserver of its own (its metaserver's address answers nothing: it never registers,
    and obeys requests signed with the cluster secret); (its address, the secret)."""
    port = free_port_block(2)
    secret_file = tmp_path / "secret"
    auth.create_secret(secret_file)
    address = f"127.0.0.1:{port}"
    proc = spawn(module_command("chunkfs.chunkserver.main", "--listen", address, "--data-dir", str(tmp_path / "cs"),
                                "--metaserver", f"127.0.0.1:{port + 1}", "--secret-file", str(secret_file)),
                 tmp_path / "cs.log", tmp_path / "cs.pid")
    try:
        wait_until(lambda: answers_health(f"http://{address}/health"), 30, "the chunkserver answering")
        yield address, auth.load_secret(secret_file)
    finally:
        stop_pid(proc.pid, timeout_s=10)


def fencing_epoch(address: str) -> int:
    with urllib.request.urlopen(f"http://{address}/health", timeout=5) as response:
        return int(json.loads(response.read())["fencing_epoch"])


def test_a_former_primarys_delete_is_refused(chunkserver):
    address, secret = chunkserver
    data = b"kept by the newest primary" * 1000

    async def scenario() -> None:
        http = SignedHttp(secret, retry_s=0, trio_native=True)
        try:
            await ChunkClient(http).put(address, 7, 1, data, chunk_checksum(data))
            await ChunkClient(http, fencing_epoch=12).delete(address, 7, 99)  # the new primary's: learnt
            with pytest.raises(FsError) as refused:
                await ChunkClient(http, fencing_epoch=11).delete(address, 7, 1)
            assert refused.value.errno == errno.ESTALE
            with pytest.raises(FsError) as unnumbered:  # signed, without an epoch: a former primary too
                await ChunkClient(http).delete(address, 7, 1)
            assert unnumbered.value.errno == errno.ESTALE
            assert await ChunkClient(http).get(address, 7, 1) == data  # still there
            await ChunkClient(http, fencing_epoch=12).delete(address, 7, 1)
            with pytest.raises(FsError) as gone:
                await ChunkClient(http).get(address, 7, 1)
            assert gone.value.errno == errno.ENOENT
        finally:
            await http.aclose()

    assert fencing_epoch(address) == 0
    trio.run(scenario)
    assert fencing_epoch(address) == 12
