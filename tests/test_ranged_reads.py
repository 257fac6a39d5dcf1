"""Ranged reads: a read that jumps into a big file fetches only the 64 KiB blocks it covers,
each verified, cached by block; a corrupt block is found by the chunkserver and reported, a
chunk file holding another chunk's data refused, and the block is served from another replica.

The in-process layer (the client core through the Python API, real daemons, no FUSE) proves it
with the chunkservers' counters (bytes served, ranged reads); the mount test does the same
through plain `os.pread` on a FUSE mount.
"""

from __future__ import annotations

import json
import os

import pytest

import chunkfs.client
from chunkfs import CHUNK_SIZE
from chunkfs.checksum import BLOCK_SIZE
from conftest import chunkfs as chunkfs_command
from conftest import chunkserver_reads, drop_caches, metrics_of, wait_until

KiB = 1024
MiB = 1024 * KiB
TAIL_BYTES = 100 * KiB  # the last chunk's length: its second block is short
FILE_BYTES = 4 * CHUNK_SIZE + TAIL_BYTES  # five chunks: more than prefetch fetches whole (3)

NO_SCRUB = {"up_options": ("--scrub-mb-per-s", "0")}  # only reads may find a corrupt block


def ranged_reads(cluster) -> int:
    total = 0
    for i in range(1, cluster.chunkservers + 1):
        total += int(metrics_of(f"127.0.0.1:{cluster.port + i}")["chunkfs_chunkserver_ranged_reads_total"])
    return total


def served(cluster) -> int:
    """Bytes the chunkservers have served so far, together."""
    return int(sum(chunkserver_reads(cluster).values()))


@pytest.fixture
def big_file(fresh_cluster):
    """FILE_BYTES of random data at /big, written through the API; its bytes."""
    data = os.urandom(FILE_BYTES)
    with chunkfs.client.connect(fresh_cluster.metaserver, secret_file=fresh_cluster.secret_file) as fs, \
            fs.open("/big", "wb") as f:
        f.write(data)
    return data


def first_replica_file(cluster, index: int):
    """(the chunkserver a read of chunk `index` of /big tries first, its file of that chunk)."""
    [chunk] = [c for c in json.loads(chunkfs_command("info", cluster.mnt / "big", "--dir", cluster.dir,
                                                     "--json").stdout)["chunks"] if c["index"] == index]
    by_id = {(d / "server_id").read_text().strip(): d.name for d in (cluster.dir / "chunkservers").iterdir()}
    first = by_id[chunk["replicas"][0]]
    name = f"{chunk['chunk_id'] & 0xff:02x}/{chunk['chunk_id']:016x}_{chunk['version']:016x}.chunk"
    return first, cluster.dir / "chunkservers" / first / "chunks" / name


def cold_client(cluster):
    """A new client: nothing cached, so every read goes to the chunkservers."""
    return chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, retry_s=5)


@pytest.mark.parametrize("fresh_cluster", [NO_SCRUB], indirect=True)
def test_a_random_read_fetches_only_the_blocks_it_covers(fresh_cluster, big_file):
    cluster, data = fresh_cluster, big_file
    # (offset, size, bytes the chunkservers must send, ranged reads they get): each read far
    # from the one before, so none of them counts as sequential (those get whole chunks)
    cases = [
        (CHUNK_SIZE + 5 * BLOCK_SIZE + 1000, 4 * KiB, BLOCK_SIZE, 1),  # inside one block
        (3 * CHUNK_SIZE + 7 * BLOCK_SIZE - 100, 200, 2 * BLOCK_SIZE, 1),  # across a block boundary
        (CHUNK_SIZE - 100, 200, 2 * BLOCK_SIZE, 2),  # across the end of chunk 0 into chunk 1
        (4 * CHUNK_SIZE + TAIL_BYTES - 10 * KiB, 20 * KiB, TAIL_BYTES - BLOCK_SIZE, 1),  # the file's short end
        (2 * CHUNK_SIZE + 40 * BLOCK_SIZE, 3 * BLOCK_SIZE, 3 * BLOCK_SIZE, 1),  # three whole blocks
    ]
    with cold_client(cluster) as fs, fs.open("/big", "rb") as f:
        for offset, size, sent_bytes, requests in cases:
            bytes_before, ranged_before = served(cluster), ranged_reads(cluster)
            f.seek(offset)
            assert f.read(size) == data[offset:offset + size]
            assert (served(cluster) - bytes_before, ranged_reads(cluster) - ranged_before) == (sent_bytes, requests), \
                (offset, size)
        bytes_before = served(cluster)
        f.seek(CHUNK_SIZE + 5 * BLOCK_SIZE + 9000)  # the first read's block again: from the cache
        assert f.read(4 * KiB) == data[CHUNK_SIZE + 5 * BLOCK_SIZE + 9000:][:4 * KiB]
        assert served(cluster) == bytes_before


@pytest.mark.parametrize("fresh_cluster", [NO_SCRUB], indirect=True)
def test_a_sequential_reader_still_gets_whole_chunks(fresh_cluster, big_file):
    cluster, data = fresh_cluster, big_file
    with cold_client(cluster) as fs, fs.open("/big", "rb") as f:
        ranged_before = ranged_reads(cluster)
        assert f.read() == data
    assert ranged_reads(cluster) == ranged_before


@pytest.mark.parametrize("fresh_cluster", [NO_SCRUB], indirect=True)
def test_a_random_read_near_the_last_one_fetches_blocks_and_reading_on_in_order_whole_chunks(
        fresh_cluster, big_file):
    """A random reader lands within the kernel's read-ahead slack of its last read now and then:
    that read alone fetches its block; two reads in a row that continue the one before make a
    reader that reads in order, which gets whole chunks."""
    cluster, data = fresh_cluster, big_file
    with cold_client(cluster) as fs, fs.open("/big", "rb") as f:
        # a read 1 MiB past the end of the last one (near it), then 2 chunks on, and near that
        for offset in (CHUNK_SIZE + 5 * BLOCK_SIZE + 1000, CHUNK_SIZE + 5 * BLOCK_SIZE + 1000 + 4 * KiB + MiB,
                       3 * CHUNK_SIZE + 1000, 3 * CHUNK_SIZE + 1000 + 4 * KiB + MiB):
            before = served(cluster)
            f.seek(offset)
            assert f.read(4 * KiB) == data[offset:offset + 4 * KiB]
            assert served(cluster) - before == BLOCK_SIZE, offset
        offset += 4 * KiB
        before = served(cluster)
        f.seek(offset)  # the second read in a row that continues the last: in order now
        assert f.read(4 * KiB) == data[offset:offset + 4 * KiB]
        assert served(cluster) - before >= CHUNK_SIZE


@pytest.mark.parametrize("fresh_cluster", [NO_SCRUB], indirect=True)
def test_a_corrupt_block_is_reported_and_served_from_another_replica(fresh_cluster, big_file):
    cluster, data = fresh_cluster, big_file
    first, copy = first_replica_file(cluster, 2)
    raw = bytearray(copy.read_bytes())
    block = 9
    raw[4096 + block * BLOCK_SIZE + 777] ^= 0xFF  # 4096: the chunk file's header
    copy.write_bytes(bytes(raw))

    offset = 2 * CHUNK_SIZE + block * BLOCK_SIZE + 512
    before = chunkserver_reads(cluster)
    with cold_client(cluster) as fs, fs.open("/big", "rb") as f:
        f.seek(offset)
        assert f.read(4 * KiB) == data[offset:offset + 4 * KiB]
        after = chunkserver_reads(cluster)
        assert after[first] == before[first]  # the corrupt block was never sent
        assert sum(after.values()) - sum(before.values()) == BLOCK_SIZE  # by another replica
        wait_until(lambda: cluster.status()["corrupt_found"] >= 1, 30, "the corrupt copy reported by the read")
        f.seek(2 * CHUNK_SIZE + (block + 20) * BLOCK_SIZE)  # a sound block of that copy is served
        assert f.read(100) == data[2 * CHUNK_SIZE + (block + 20) * BLOCK_SIZE:][:100]


@pytest.mark.parametrize("fresh_cluster", [NO_SCRUB], indirect=True)
def test_a_replica_file_holding_another_chunk_is_never_served(fresh_cluster, big_file):
    """A chunk file whose blocks agree with their checksums but hold another chunk's data (a
    file restored to the wrong name, a bug) is refused by its header's checksum, not served."""
    cluster, data = fresh_cluster, big_file
    first, copy = first_replica_file(cluster, 2)
    _, other = first_replica_file(cluster, 3)
    copy.write_bytes(other.read_bytes())  # whole: header, block checksums and data agree

    offset = 2 * CHUNK_SIZE + 9 * BLOCK_SIZE + 512
    before = chunkserver_reads(cluster)
    with cold_client(cluster) as fs, fs.open("/big", "rb") as f:
        f.seek(offset)
        assert f.read(4 * KiB) == data[offset:offset + 4 * KiB]
        after = chunkserver_reads(cluster)
        assert after[first] == before[first]  # the other chunk's block was never sent
        assert sum(after.values()) - sum(before.values()) == BLOCK_SIZE  # by another replica
    assert cluster.status()["corrupt_found"] == 0  # a client's word takes no copy out of the cluster


def test_random_preads_on_the_mount_fetch_blocks_not_chunks(fresh_cluster):
    cluster = fresh_cluster
    data = os.urandom(FILE_BYTES)
    (cluster.mnt / "big").write_bytes(data)
    drop_caches(cluster)
    offsets = [3 * CHUNK_SIZE + 12345, CHUNK_SIZE + 777_777, 4 * CHUNK_SIZE + 70_000, 2 * CHUNK_SIZE + 3_000_000]
    before = served(cluster)
    fd = os.open(cluster.mnt / "big", os.O_RDONLY)
    try:
        for offset in offsets:
            assert os.pread(fd, 4 * KiB, offset) == data[offset:offset + 4 * KiB]
    finally:
        os.close(fd)
    # each read is one block (two at most, should the kernel round a read across one)
    assert 0 < served(cluster) - before <= len(offsets) * 2 * BLOCK_SIZE
