"""`chunkfs fsck` checks the disks: replica files removed, damaged or planted behind the
metaserver's back are found against its records, `--repair` puts things right, and a file whose
every replica is gone is named as lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from chunkfs import CHUNK_SIZE
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
