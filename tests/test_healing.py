"""Self-healing: chunks go back to their goal after a chunkserver dies, a corrupt copy is found by
scrub and rebuilt, an emptied disk is refilled, a drained server ends up empty, goals take effect."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable, chunk_key
from chunkfs.metaserver.db import MetaDB
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.replicas import ReplicaEdits
from conftest import chunkfs, wait_until

HEARTBEAT_TIMEOUT_S = "3"
FAST = ("--heartbeat-timeout-s", HEARTBEAT_TIMEOUT_S)
four_servers = pytest.mark.parametrize(
    "fresh_cluster", [{"chunkservers": 4, "up_options": FAST}], indirect=True)
three_servers = pytest.mark.parametrize("fresh_cluster", [{"up_options": FAST}], indirect=True)
scrubbing = pytest.mark.parametrize(
    "fresh_cluster", [{"up_options": (*FAST, "--scrub-mb-per-s", "1000", "--scrub-interval-s", "1")}], indirect=True)


def write_files(cluster, sizes: dict[str, int]) -> dict[str, str]:
    digests = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        (cluster.mnt / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def server_ids(cluster) -> dict[str, str]:
    """csN -> server id."""
    return {d.name: (d / "server_id").read_text().strip()
            for d in sorted((cluster.dir / "chunkservers").iterdir())}


def chunk_file(cluster, name: str, chunk_id: int, version: int) -> Path:
    return (cluster.dir / "chunkservers" / name / "chunks" / f"{chunk_id & 0xff:02x}"
            / f"{chunk_id:016x}_{version:016x}.chunk")


def chunk_files(cluster, name: str) -> list[Path]:
    return list((cluster.dir / "chunkservers" / name / "chunks").glob("*/*.chunk"))


def contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def chunks_of(cluster, names) -> list[dict]:
    """Every chunk of these files, with its replicas as recorded by the metaserver."""
    out = []
    for name in names:
        layout = json.loads(chunkfs("info", cluster.mnt / name, "--json").stdout)
        out.extend(layout["chunks"])
    return out


def replicas_are(cluster, names, want: Callable[[list[str]], bool]) -> bool:
    return all(want(chunk["replicas"]) for chunk in chunks_of(cluster, names))


def copies_on_disk_agree(cluster, names) -> None:
    """Each recorded replica is a file on its server, byte for byte the same as the others."""
    by_id = {sid: name for name, sid in server_ids(cluster).items()}
    for chunk in chunks_of(cluster, names):
        copies = {chunk_file(cluster, by_id[sid], chunk["chunk_id"], chunk["version"]).read_bytes()
                  for sid in chunk["replicas"]}
        assert len(copies) == 1, f"replicas of chunk {chunk['chunk_id']} differ"


def read_back(cluster, digests: dict[str, str]) -> None:
    for name, digest in digests.items():
        assert hashlib.sha256((cluster.mnt / name).read_bytes()).hexdigest() == digest, name


def server_status(cluster, name: str) -> dict:
    address = f"127.0.0.1:{cluster.port + int(name[2:])}"
    return next(s for s in cluster.status()["servers"] if s["address"] == address)


@four_servers
def test_chunks_return_to_goal_when_a_chunkserver_dies(fresh_cluster):
    files = write_files(fresh_cluster, {"a": 2 * CHUNK_SIZE, "b": CHUNK_SIZE + 5, "c": 12345})
    dead = server_ids(fresh_cluster)["cs2"]
    on_dead = sum(dead in c["replicas"] for c in chunks_of(fresh_cluster, files))
    assert on_dead > 0
    fresh_cluster.kill("cs2", signal.SIGKILL)
    alive = lambda replicas: len(replicas) == 3 and dead not in replicas
    took_s = wait_until(lambda: replicas_are(fresh_cluster, files, alive), 40,
                        "every chunk back to 3 replicas, none on the dead server")
    status = fresh_cluster.status()
    assert status["chunks_under_goal"] == 0
    assert status["chunks_replicated"] >= on_dead
    copies_on_disk_agree(fresh_cluster, files)
    read_back(fresh_cluster, files)
    print(f"{on_dead} chunks back at goal {took_s:.1f} s after the kill")
    fresh_cluster.up()  # the dead server returns: its copies, dropped from the records, are deleted
    wait_until(lambda: not chunk_files(fresh_cluster, "cs2") and fresh_cluster.status()["pending_deletions"] == 0,
               30, "the returned server's stale copies deleted")
    assert replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 3)


@scrubbing
def test_scrub_finds_a_flipped_byte_and_the_copy_is_rebuilt(fresh_cluster):
    files = write_files(fresh_cluster, {"precious": CHUNK_SIZE + 100})
    (first, *_rest) = chunks_of(fresh_cluster, files)
    victim = chunk_file(fresh_cluster, "cs1", first["chunk_id"], first["version"])
    raw = bytearray(victim.read_bytes())
    raw[4096 + 70_000] ^= 0xFF
    victim.write_bytes(bytes(raw))
    wait_until(lambda: fresh_cluster.status()["corrupt_found"] >= 1, 30, "scrub reports the corrupt copy")
    wait_until(lambda: contents(victim) not in (None, bytes(raw))
               and replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 3), 30,
               "the corrupt copy replaced by a good one")
    copies_on_disk_agree(fresh_cluster, files)
    read_back(fresh_cluster, files)


@three_servers
def test_a_chunkserver_with_an_emptied_disk_is_refilled(fresh_cluster, tmp_path):
    files = write_files(fresh_cluster, {"x": 2 * CHUNK_SIZE + 1, "y": 1000})
    before = len(chunk_files(fresh_cluster, "cs3"))
    assert before == len(chunks_of(fresh_cluster, files))
    fresh_cluster.kill("cs3", signal.SIGTERM)
    shutil.move(fresh_cluster.dir / "chunkservers" / "cs3" / "chunks", tmp_path / "old-disk")
    fresh_cluster.up()
    wait_until(lambda: len(chunk_files(fresh_cluster, "cs3")) == before
               and replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 3), 40,
               "the emptied server holds its chunks again")
    copies_on_disk_agree(fresh_cluster, files)
    read_back(fresh_cluster, files)


@four_servers
def test_a_drained_server_ends_up_empty(fresh_cluster):
    files = write_files(fresh_cluster, {"p": 2 * CHUNK_SIZE, "q": 777})
    drained = server_ids(fresh_cluster)["cs1"]
    address = f"127.0.0.1:{fresh_cluster.port + 1}"
    result = chunkfs("drain", address, "--dir", fresh_cluster.dir, "--wait", "40", "--json")
    state = json.loads(result.stdout)
    assert state["draining"] and state["chunks"] == 0
    assert replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 3 and drained not in replicas)
    files |= write_files(fresh_cluster, {"after": CHUNK_SIZE})  # new chunks do not stay there either
    wait_until(lambda: server_status(fresh_cluster, "cs1")["chunks"] == 0
               and not chunk_files(fresh_cluster, "cs1"), 30, "no chunk left on the drained server")
    copies_on_disk_agree(fresh_cluster, files)
    fresh_cluster.down()
    fresh_cluster.up()  # a new mount (nothing cached) and a restarted metaserver
    assert server_status(fresh_cluster, "cs1")["draining"]
    read_back(fresh_cluster, files)


@three_servers
def test_changing_the_goal_trims_or_adds_copies(fresh_cluster):
    files = write_files(fresh_cluster, {"g": 2 * CHUNK_SIZE + 3})
    total_files = lambda: sum(len(chunk_files(fresh_cluster, f"cs{i}")) for i in (1, 2, 3))
    assert total_files() == 9
    chunkfs("goal", fresh_cluster.mnt / "g", "1")
    wait_until(lambda: replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 1)
               and total_files() == 3, 30, "one copy of each chunk left")
    chunkfs("goal", fresh_cluster.mnt / "g", "2")
    wait_until(lambda: replicas_are(fresh_cluster, files, lambda replicas: len(replicas) == 2)
               and total_files() == 6, 30, "two copies of each chunk")
    copies_on_disk_agree(fresh_cluster, files)
    read_back(fresh_cluster, files)


def test_replica_edits_apply_only_to_the_same_version_and_never_drop_the_last_copy(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    chunks = ChunkTable(db, Namespace(db, 3))
    edits = ReplicaEdits(chunks)
    key = chunk_key(7, 0)
    record = lambda txn: msgspec.msgpack.decode(txn.get(key, db=db.chunks), type=ChunkRecord)
    with db.env.begin(write=True) as txn:
        txn.put(key, msgspec.msgpack.encode(ChunkRecord(5, 9, 10, "c", ["a", "b"])), db=db.chunks)
        assert edits.add(txn, key, 5, 9, "c") and record(txn).replicas == ["a", "b", "c"]
        assert not edits.add(txn, key, 5, 8, "d")  # an older version: the copy is garbage
        assert edits.pending_deletion(txn, 5, 8) == {"d"}
        assert edits.trim(txn, key, 5, 9, ["b"]) == ["a", "c"] and record(txn).replicas == ["b"]
        assert edits.pending_deletion(txn, 5, 9) == {"a", "c"}
        assert not edits.add(txn, key, 5, 9, "a")  # its deletion there is still queued
        found = edits.find(txn, lambda rec: "b" in rec.replicas)
        assert found == {(5, 9): key}
        result = edits.drop_corrupt(txn, "b", [(5, 9), (6, 1)], found)
        assert result.kept == [(5, 9)] and result.unreferenced == [(6, 1)]
        assert record(txn).replicas == ["b"]
    db.close()
