"""The admin commands against a real cluster: `servers`, `fsck`, `gc` and `--json`, and request
ids that lead from a client's error message to the metaserver's log line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path

import msgspec
import pytest

from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES, mounts
from chunkfs.daemons import unmount
from chunkfs.metaserver.chunk_table import ChunkRecord, ChunkTable, chunk_key
from chunkfs.metaserver.db import MetaDB
from chunkfs.metaserver.fsck import check_page
from chunkfs.metaserver.namespace import Namespace
from chunkfs.protocol import records as r
from conftest import OpenFileElsewhere, chunkfs, wait_until

FAST = {"up_options": ("--heartbeat-timeout-s", "3")}


def run_json(*args) -> dict | list:
    return json.loads(chunkfs(*args, "--json").stdout)


def chunk_path(cluster, server: str, chunk_id: int, version: int) -> Path:
    return (cluster.dir / "chunkservers" / server / "chunks" / f"{chunk_id & 0xff:02x}"
            / f"{chunk_id:016x}_{version:016x}.chunk")


def server_names(cluster) -> dict[str, str]:
    """server id -> csN"""
    return {(d / "server_id").read_text().strip(): d.name for d in (cluster.dir / "chunkservers").iterdir()}


# ---- a shared cluster ---------------------------------------------------------------------------


def test_servers_lists_every_chunkserver(cluster):
    (cluster.mnt / "s").write_bytes(os.urandom(CHUNK_SIZE + 10))
    table = chunkfs("servers", "--dir", cluster.dir).stdout
    for i in range(1, 4):
        assert f"127.0.0.1:{cluster.port + i}" in table
    assert table.count(" up ") == 3
    servers = run_json("servers", "--dir", cluster.dir)
    assert len(servers) == 3
    for s in servers:
        assert s["state"] == "up" and s["alive"] and s["chunks"] >= 2
        assert s["free_bytes"] == s["capacity_bytes"] - s["used_bytes"] > 0
        assert s["data_dirs"] and str(cluster.dir / "chunkservers") in s["data_dirs"][0]
        assert 0 <= s["last_seen_s"] < 10


def test_fsck_of_a_healthy_cluster_is_clean(cluster):
    (cluster.mnt / "tree" / "deep" / "er").mkdir(parents=True)
    for i, size in enumerate([0, 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 7]):
        (cluster.mnt / "tree" / "deep" / "er" / f"f{i}").write_bytes(os.urandom(size))
    os.symlink("f1", cluster.mnt / "tree" / "link")
    result = chunkfs("fsck", "--dir", cluster.dir)
    assert "0 missing" in result.stdout and "0 under goal" in result.stdout
    report = run_json("fsck", cluster.mnt / "tree", "--page", "2")  # many small pages
    assert report["exit_code"] == 0 and report["problems"] == []
    assert report["files_checked"] == 4 and report["chunks_checked"] == 0 + 0 + 1 + 3  # f1 is inline
    single = run_json("fsck", cluster.mnt / "tree" / "deep" / "er" / "f3")
    assert single["files_checked"] == 1 and single["chunks_checked"] == 3


def test_json_of_status_goal_and_info(cluster):
    (cluster.mnt / "j").write_bytes(os.urandom(CHUNK_SIZE + 1))
    status = run_json("status", "--dir", cluster.dir)
    assert status["chunks"] >= 2 and len(status["servers"]) == 3
    assert run_json("goal", cluster.mnt / "j") == {"path": str(cluster.mnt / "j"), "goal": 3}
    info = run_json("info", cluster.mnt / "j")
    assert info["path"] == str(cluster.mnt / "j") and info["attr"]["size"] == CHUNK_SIZE + 1
    assert [c["index"] for c in info["chunks"]] == [0, 1]
    for chunk in info["chunks"]:
        assert [s["id"] for s in chunk["replica_servers"]] == chunk["replicas"]
        assert all(s["up"] and s["address"].startswith("127.0.0.1:") for s in chunk["replica_servers"])


def test_an_error_names_a_request_id_found_in_the_metaserver_log(cluster):
    result = chunkfs("drain", "no-such-server", "--dir", cluster.dir, check=False)
    assert result.returncode == 1
    match = re.search(r"request_id=([0-9a-f]{12})\b", result.stderr)
    assert match and "no chunkserver" in result.stderr, result.stderr
    log_lines = (cluster.dir / "logs" / "metaserver.log").read_text().splitlines()
    [line] = [line for line in log_lines if match.group(0) in line]
    assert "status=404" in line and "errno=ENOENT" in line and "path=/v1/servers/drain" in line


# ---- clusters of their own ----------------------------------------------------------------------


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_fsck_finds_chunks_under_goal_and_missing_when_a_chunkserver_stops(fresh_cluster):
    c = fresh_cluster
    (c.mnt / "three").write_bytes(os.urandom(2 * CHUNK_SIZE))
    (c.mnt / "one").mkdir()
    chunkfs("goal", c.mnt / "one", "1")
    (c.mnt / "one" / "only").write_bytes(os.urandom(INLINE_MAX_BYTES + 100))  # in one chunk, not inline
    assert chunkfs("fsck", "--dir", c.dir).returncode == 0
    [only_chunk] = run_json("info", c.mnt / "one" / "only")["chunks"]
    victim = server_names(c)[only_chunk["replicas"][0]]
    c.kill(victim, signal.SIGKILL)
    c.wait_alive(2, timeout_s=20)

    result = chunkfs("fsck", "--dir", c.dir, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "three" in result.stdout and "only" in result.stdout
    report = json.loads(chunkfs("fsck", "--dir", c.dir, "--json", check=False).stdout)
    problems = {p["path"]: p for p in report["problems"]}
    assert problems["/three"]["under_goal"] == 2 and problems["/three"]["missing"] == 0
    assert problems["/one/only"]["missing"] == 1
    assert report["missing"] == 1 and report["under_goal"] == 2 and report["exit_code"] == 2

    under_only = chunkfs("fsck", c.mnt / "three", check=False)  # under goal, nothing missing
    assert under_only.returncode == 1, under_only.stdout
    c.up()  # the server comes back: all is well again
    c.wait_alive(3)
    wait_until(lambda: chunkfs("fsck", "--dir", c.dir, check=False).returncode == 0, 20, "fsck clean again")


@pytest.mark.parametrize("fresh_cluster", [FAST], indirect=True)
def test_gc_removes_an_orphan_chunk_and_never_a_referenced_one(fresh_cluster):
    c = fresh_cluster
    data = os.urandom(CHUNK_SIZE + 123)
    (c.mnt / "kept").write_bytes(data)
    referenced = [chunk_path(c, server_names(c)[sid], ch["chunk_id"], ch["version"])
                  for ch in run_json("info", c.mnt / "kept")["chunks"] for sid in ch["replicas"]]
    assert len(referenced) == 6 and all(p.exists() for p in referenced)
    an_hour_ago = time.time() - 3600
    for path in referenced:  # as old as any orphan: only being referenced protects them
        os.utime(path, (an_hour_ago, an_hour_ago))
    orphan = chunk_path(c, "cs1", 987_654_321, 10**12)  # left behind by a client that died
    young = chunk_path(c, "cs2", 987_654_322, 10**12)  # maybe an upload whose commit is coming
    for planted in (orphan, young):
        planted.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(referenced[0], planted)
    os.utime(orphan, (an_hour_ago, an_hour_ago))

    dry = run_json("gc", "--dir", c.dir, "--dry-run")
    assert dry["dry_run"] and dry["versions"] == 1 and dry["bytes"] == orphan.stat().st_size
    assert [s["versions"] for s in dry["servers"]] == [1, 0, 0]
    assert c.status()["pending_deletions"] == 0  # a dry run queued nothing: nothing can go
    assert orphan.exists()

    table = chunkfs("gc", "--dir", c.dir, "--wait", "30").stdout
    assert "1 unreferenced chunk versions" in table and "queued for deletion" in table
    assert not orphan.exists()
    assert young.exists() and all(p.exists() for p in referenced)
    assert (c.mnt / "kept").read_bytes() == data
    again = run_json("gc", "--dir", c.dir, "--min-age-s", "0")
    assert again["versions"] == 1  # now the young one too (no reservation covers its version)
    wait_until(lambda: not young.exists(), 20, "the young orphan removed")
    assert all(p.exists() for p in referenced) and chunkfs("fsck", "--dir", c.dir).returncode == 0


# ---- the walk, without servers -----------------------------------------------------------------


def test_fsck_pages_visit_every_file_once(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    namespace = Namespace(db, 2)
    chunks = ChunkTable(db, namespace)
    paths = []
    with db.env.begin(write=True) as txn:
        namespace.init_root(txn)
        for d in range(3):
            parent = namespace.create(txn, r.CreateReq(parent=1, name=f"d{d}".encode(), mode=stat.S_IFDIR | 0o755,
                                                       uid=0, gid=0)).ino
            sub = namespace.create(txn, r.CreateReq(parent=parent, name=b"sub", mode=stat.S_IFDIR | 0o755,
                                                    uid=0, gid=0)).ino
            for f in range(d + 2):
                for where, name in ((parent, f"d{d}/f{f}"), (sub, f"d{d}/sub/f{f}")):
                    ino = namespace.create(txn, r.CreateReq(parent=where, name=f"f{f}".encode(),
                                                            mode=stat.S_IFREG | 0o644, uid=0, gid=0)).ino
                    replicas = ["a", "b"] if f % 2 else ["a"]
                    txn.put(chunk_key(ino, 0), msgspec.msgpack.encode(ChunkRecord(ino, 1, 10, "x", replicas)),
                            db=db.chunks)
                    paths.append(name)
    for limit in (1, 2, 3, 1000):
        seen, problems, cursor = 0, [], []
        with db.read() as txn:
            for _ in range(1000):
                page = check_page(txn, namespace, chunks, {"a", "b"}, {}, r.FsckReq(1, cursor, limit))
                seen += page.files_checked
                problems += [p.path.decode() for p in page.problems]
                cursor = page.cursor
                if not cursor:
                    break
        assert seen == len(paths), limit
        assert sorted(problems) == sorted(p for p in paths if int(p[-1]) % 2 == 0)  # one replica of goal 2
    with db.read() as txn:  # a replica reported corrupt is not live
        page = check_page(txn, namespace, chunks, {"a", "b"}, {(namespace.resolve(txn, b"d0/f1").ino, 1): {"b"}},
                          r.FsckReq(namespace.resolve(txn, b"d0/f1").ino))
        assert page.problems[0].corrupt == 1 and page.problems[0].path == b""
    db.close()


@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--orphan-grace-s", "2")}], indirect=True)
def test_a_mount_killed_mid_upload_leaves_chunks_that_gc_collects(fresh_cluster, tmp_path):
    """A mount that dies while a file is being written has stored chunks no commit will ever
    name; a garbage collection removes them once their reservation is past the grace (an hour
    by default, 2 s here) (README: Deletion, `chunkfs gc`)."""
    c = fresh_cluster
    dying = tmp_path / "dying"
    chunkfs("mount", c.metaserver, dying, "--secret-file", c.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-d'},max_dirty_mb=16")
    stored = lambda: list((c.dir / "chunkservers").glob("*/chunks/*/*.chunk"))
    writer = None
    try:
        writer = OpenFileElsewhere(dying / "unfinished")
        for _ in range(10):  # 40 MiB through a mount holding at most 16: chunks are uploaded before any close
            writer.ask("write " + "x" * (4 * 1024 * 1024))
        wait_until(lambda: len(stored()) >= 3, 30, "a chunk of the open file stored on the chunkservers")
        os.kill(mounts.find(dying)["pid"], signal.SIGKILL)
    finally:
        if writer is not None:
            writer.end()
        unmount(dying)
    assert os.stat(c.mnt / "unfinished").st_size == 0  # nothing was committed
    left = len(stored())

    def collected() -> bool:  # each pass queues what is past the grace, and waits for its deletion
        report = run_json("gc", "--dir", c.dir, "--min-age-s", "0", "--wait", "30")
        assert report["pending_deletions"] == 0, report
        return stored() == []

    wait_until(collected, 30, f"gc removes the {left} chunk files the dead mount uploaded", poll_s=1)
