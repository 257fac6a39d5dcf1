"""`chunkfs fsck` checks the disks: replica files removed, damaged or planted behind the
metaserver's back are found against its records, `--repair` puts things right, and a file whose
every replica is gone is named as lost."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import msgspec
import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable, chunk_key
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.disk_check import DiskCheck
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicator import Replicator
from chunkfs.protocol import records as r
from chunkfs.protocol.disk_check import DiskCheckReq, Inventory
from conftest import chunkfs, wait_until

FAST = {"up_options": ("--heartbeat-timeout-s", "3")}
EXIT_PROBLEMS, EXIT_UNREADABLE = 1, 2


def fsck_json(cluster, *args: str) -> dict:
    result = chunkfs("fsck", "--dir", cluster.dir, "--json", *args, check=False)
    report = json.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    return report


def is_clean(cluster) -> bool:
    return chunkfs("fsck", "--dir", cluster.dir, check=False).returncode == 0


def server_names(cluster) -> dict[str, str]:
    """server id -> csN"""
    return {(d / "server_id").read_text().strip(): d.name for d in (cluster.dir / "chunkservers").iterdir()}


def replica_files(cluster, name: str) -> list[tuple[str, Path]]:
    """(server id, file) of each replica of the first chunk of `name`, as the metaserver records it."""
    chunk = json.loads(chunkfs("info", cluster.mnt / name, "--json").stdout)["chunks"][0]
    names = server_names(cluster)
    return [(sid, cluster.dir / "chunkservers" / names[sid] / "chunks" / f"{chunk['chunk_id'] & 0xff:02x}"
             / f"{chunk['chunk_id']:016x}_{chunk['version']:016x}.chunk") for sid in chunk["replicas"]]


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_missing_replicas_are_found_and_copied_again(fresh_cluster):
    c = fresh_cluster
    data = os.urandom(CHUNK_SIZE + 5)
    (c.mnt / "f").write_bytes(data)
    assert is_clean(c)
    replicas = replica_files(c, "f")
    for _sid, path in replicas[:2]:
        path.unlink()
    report = fsck_json(c)
    assert report["exit_code"] == EXIT_PROBLEMS
    disks = report["disks"]
    assert disks["missing"] == 2 and disks["corrupt"] == disks["unknown"] == 0
    assert sorted((rep["server_id"], rep["state"]) for rep in disks["replicas"]) == \
        sorted((sid, "missing") for sid, _ in replicas[:2])
    [short] = disks["files"].values()
    assert short["path"] == "/f" and short["chunks_under_goal"] == 1 and short["chunks_lost"] == 0
    assert "2 missing" in chunkfs("fsck", "--dir", c.dir, check=False).stdout

    repaired = fsck_json(c, "--repair")
    assert repaired["disks"]["repaired"] == 2
    wait_until(lambda: is_clean(c), 40, "fsck clean after the repair")
    assert all(path.exists() for _sid, path in replicas)  # copied back (the servers had room)
    assert (c.mnt / "f").read_bytes() == data


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_a_corrupt_replica_is_found_by_verify_and_rebuilt(fresh_cluster):
    c = fresh_cluster
    data = os.urandom(CHUNK_SIZE)
    (c.mnt / "f").write_bytes(data)
    sid, victim = replica_files(c, "f")[0]
    raw = bytearray(victim.read_bytes())
    raw[4096 + 1000] ^= 0xFF
    victim.write_bytes(bytes(raw))
    report = fsck_json(c, "--verify")  # the chunkservers re-read what they hold now
    assert report["exit_code"] == EXIT_PROBLEMS
    assert [(rep["server_id"], rep["state"]) for rep in report["disks"]["replicas"]] == [(sid, "corrupt")]
    fsck_json(c, "--repair")
    wait_until(lambda: victim.exists() and victim.read_bytes() != bytes(raw), 40, "the corrupt replica replaced")
    wait_until(lambda: is_clean(c), 20, "fsck clean")
    assert (c.mnt / "f").read_bytes() == data


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_a_file_whose_every_replica_is_gone_is_reported_lost_by_path(fresh_cluster):
    c = fresh_cluster
    (c.mnt / "dir" / "sub").mkdir(parents=True)
    (c.mnt / "dir" / "sub" / "gone").write_bytes(os.urandom(CHUNK_SIZE))
    (c.mnt / "kept").write_bytes(os.urandom(CHUNK_SIZE))
    for _sid, path in replica_files(c, "dir/sub/gone"):
        path.unlink()
    report = fsck_json(c)
    assert report["exit_code"] == EXIT_UNREADABLE
    assert report["lost_files"] == ["/dir/sub/gone"]
    assert report["disks"]["missing"] == 3
    text = chunkfs("fsck", "--dir", c.dir, check=False).stdout
    assert "lost: /dir/sub/gone" in text and "kept" not in text


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_an_unknown_chunk_file_is_reported_and_removed_by_repair(fresh_cluster):
    c = fresh_cluster
    (c.mnt / "f").write_bytes(os.urandom(CHUNK_SIZE))
    sid, model = replica_files(c, "f")[0]
    planted = model.parent.parent / "7b" / f"{0x1234567b:016x}_{10**12:016x}.chunk"
    planted.parent.mkdir(exist_ok=True)
    shutil.copyfile(model, planted)
    an_hour_ago = time.time() - 3600
    os.utime(planted, (an_hour_ago, an_hour_ago))  # older than any upload in flight
    report = fsck_json(c)
    assert report["exit_code"] == EXIT_PROBLEMS
    assert [(rep["chunk_id"], rep["server_id"], rep["state"]) for rep in report["disks"]["replicas"]] == \
        [(0x1234567b, sid, "unknown")]
    fsck_json(c, "--repair")
    wait_until(lambda: not planted.exists(), 30, "the unknown chunk file deleted")
    wait_until(lambda: is_clean(c), 20, "fsck clean")
    assert model.exists()


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_a_chunkserver_down_is_reported_and_its_replicas_are_not_called_missing(fresh_cluster):
    c = fresh_cluster
    (c.mnt / "f").write_bytes(os.urandom(2 * CHUNK_SIZE))
    c.kill("cs2", signal.SIGKILL)
    c.wait_alive(2, timeout_s=20)
    report = fsck_json(c)
    assert report["exit_code"] == EXIT_PROBLEMS  # under goal, every chunk still readable
    disks = report["disks"]
    down = [s for s in disks["servers"].values() if s["state"] != "up"]
    assert [s["address"] for s in down] == [f"127.0.0.1:{c.port + 2}"] and down[0]["state"] == "down"
    assert disks["unreachable"] == 2 and disks["missing"] == 0 and disks["replicas"] == []
    [short] = disks["files"].values()
    assert short["path"] == "/f" and short["chunks_under_goal"] == 2 and short["chunks_lost"] == 0


# ---- the comparison, without servers: scripted inventories ------------------------------------


class ScriptedServers:
    """Stands for the chunkservers: each call to a server answers its next scripted inventory."""

    def __init__(self, answers: dict[str, list[Inventory]]) -> None:
        self.answers = answers

    async def inventory_of_buckets(self, address, buckets, min_age_s, verify=False, retry_s=None) -> Inventory:
        return self.answers[address.partition(":")[0]].pop(0)


def held(*versions, corrupt=()) -> Inventory:
    return Inventory(old=list(versions), recent=[], corrupt=list(corrupt))


def test_only_findings_that_hold_at_a_second_reading_are_reported(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    namespace = Namespace(db, 2)
    chunks = ChunkTable(db, namespace)
    committer = GroupCommitter(db)
    registry = Registry(db, heartbeat_timeout_s=60)
    for sid in ("a", "b", "c"):
        registry.heartbeat(r.ServerHello(id=sid, address=f"{sid}:9521", capacity_bytes=1 << 40, used_bytes=0))
    with db.env.begin(write=True) as txn:
        namespace.init_root(txn)
        ino = namespace.create(txn, r.CreateReq(parent=1, name=b"f", mode=stat.S_IFREG | 0o644, uid=0, gid=0)).ino
        for index, (cid, replicas) in enumerate([(1, ["a", "b"]), (2, ["a", "b"]), (3, ["a", "b"])]):
            txn.put(chunk_key(ino, index), msgspec.msgpack.encode(ChunkRecord(cid, 7, 10, "x", replicas)),
                    db=db.chunks)
        chunks.owners.grant(txn, "a-writer", 20, 5)  # versions 20..24: uploads it may still commit
    servers = ScriptedServers({
        # first reading: a lacks chunk 1 (written meanwhile: held at the second reading) and chunk 2
        # (really gone); c holds an unknown version 9 (deleted meanwhile), version 10 (still
        # there) and (11, 22), an upload under a live reservation (not unknown: gc keeps it too)
        "a": [held((3, 7)), held((1, 7), (3, 7))],
        "b": [held((1, 7), (2, 7), (3, 7), corrupt=[(3, 7)]), held((1, 7), (2, 7), (3, 7), corrupt=[(3, 7)])],
        "c": [held((9, 1), (10, 1), (11, 22)), held((10, 1), (11, 22))],
    })
    deleter = Deleter(db, committer, chunks, registry, servers, 1.0)
    replicator = Replicator(db, committer, chunks, registry, servers, deleter, 20, 4)
    check = DiskCheck(db, committer, chunks, registry, replicator, deleter, servers)
    page = asyncio.run(check.run(DiskCheckReq(first_bucket=0, buckets=256, min_age_s=0)))
    found = sorted((rep.chunk_id, rep.server_id, rep.state) for rep in page.replicas)
    assert found == [(2, "a", "missing"), (3, "b", "corrupt"), (10, "c", "unknown")]
    assert (page.missing, page.corrupt, page.unknown, page.unreachable) == (1, 1, 1, 0)
    [short] = page.files
    assert (short.path, short.chunks_under_goal, short.chunks_lost) == (b"f", 2, 0)
    committer.stop()
    db.close()
