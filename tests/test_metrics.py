"""Every daemon's Prometheus /metrics: the series an operator graphs exist and move with traffic,
and every metric the Grafana dashboard in deploy/grafana queries is exported."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import _cluster, metrics_of as scrape, wait_until

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "chunkfs-dashboard.json"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small_cache_cluster(tmp_path_factory):
    """A cluster whose mount caches 8 MiB, so reading a bigger file back misses the cache."""
    yield from _cluster(tmp_path_factory, mount_options="retry_s=5,cache_mem_mb=8")


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for key, value in samples.items()
               if key.partition("{")[0] == name and all(w in key for w in wanted))


def addresses(cluster) -> dict[str, str]:
    return {"metaserver": cluster.metaserver, "chunkserver": f"127.0.0.1:{cluster.port + 1}",
            "mount": f"127.0.0.1:{cluster.port + 100}"}


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_every_daemon_counts_requests_bytes_and_state(small_cache_cluster):
    cluster = small_cache_cluster
    where = addresses(cluster)
    chunkservers = [f"127.0.0.1:{cluster.port + i}" for i in (1, 2, 3)]
    read_by_chunkservers = lambda: sum(total(scrape(a), "chunkfs_chunkserver_read_bytes_total") for a in chunkservers)
    before = {name: scrape(address) for name, address in where.items()}
    read_before = read_by_chunkservers()
    data = os.urandom(16 * MiB)  # four chunks: twice the mount's cache
    path = cluster.mnt / "metrics-file"
    path.write_bytes(data)
    drop_page_cache(path)
    assert path.read_bytes() == data
    os.listdir(cluster.mnt)
    after = {name: scrape(address) for name, address in where.items()}
    moved = lambda daemon, name, **labels: (total(after[daemon], name, **labels)
                                            - total(before[daemon], name, **labels))

    meta = after["metaserver"]
    assert total(meta, "chunkfs_cluster_chunkservers", state="up") == 3
    assert total(meta, "chunkfs_cluster_chunks") >= 4
    # used space comes with the next heartbeat, which may not have been sent since the write
    assert total(meta, "chunkfs_cluster_capacity_bytes") >= total(meta, "chunkfs_cluster_free_bytes") > 0
    for name in ("chunkfs_cluster_chunks_under_goal", "chunkfs_cluster_pending_deletions",
                 "chunkfs_repair_copies_made_total", "chunkfs_repair_copies_running",
                 "chunkfs_repair_copies_pending", "chunkfs_repair_corrupt_replicas_found_total",
                 "chunkfs_gc_versions_deleted_total", "chunkfs_gc_replicas_deleted_total"):
        assert name in meta, name
    per_server = {k: v for k, v in meta.items() if k.startswith("chunkfs_cluster_chunkserver_chunks{")}
    assert len(per_server) == 3 and all(v >= 4 for v in per_server.values())  # goal 3 of 3 servers
    assert len([k for k in meta if k.startswith("chunkfs_cluster_chunkserver_free_bytes{")]) == 3
    assert moved("metaserver", "chunkfs_http_requests_total", op="commit", status="200") >= 1
    assert moved("metaserver", "chunkfs_http_requests_total", op="open") >= 1
    # chunk versions are reserved in blocks: this test's chunks may come from a block taken before
    assert total(meta, "chunkfs_http_request_duration_seconds_count", op="reserve") >= 1

    cs = after["chunkserver"]
    assert moved("chunkserver", "chunkfs_chunkserver_written_bytes_total") >= len(data)
    assert read_by_chunkservers() > read_before  # the cache misses
    assert moved("chunkserver", "chunkfs_http_requests_total", op="PUT", status="200") >= 4
    assert moved("chunkserver", "chunkfs_http_request_duration_seconds_count", op="GET") >= 1
    assert total(cs, "chunkfs_chunkserver_chunks") >= 4
    assert 0 < total(cs, "chunkfs_chunkserver_used_bytes") < total(cs, "chunkfs_chunkserver_capacity_bytes")
    assert total(cs, "chunkfs_chunkserver_free_bytes") > 0
    dirs = [k for k in cs if k.startswith("chunkfs_chunkserver_dir_free_bytes{")]
    assert len(dirs) == 1 and str(cluster.dir / "chunkservers" / "cs1") in dirs[0]

    assert moved("mount", "chunkfs_fuse_written_bytes_total") == len(data)
    assert moved("mount", "chunkfs_fuse_read_bytes_total") >= len(data)
    assert moved("mount", "chunkfs_fuse_requests_total", op="write", result="ok") >= 16  # 1 MiB writes
    assert moved("mount", "chunkfs_fuse_requests_total", op="create", result="ok") == 1
    assert moved("mount", "chunkfs_fuse_requests_total", op="readdir", result="ok") >= 1
    assert moved("mount", "chunkfs_fuse_request_duration_seconds_count", op="read") >= 1
    assert moved("mount", "chunkfs_mount_written_bytes_total") >= 3 * len(data)  # each replica counts
    assert moved("mount", "chunkfs_mount_read_bytes_total") > 0
    assert moved("mount", "chunkfs_mount_cache_misses_total") >= 1
    assert moved("mount", "chunkfs_mount_cache_hits_total") + moved("mount", "chunkfs_mount_cache_misses_total") >= 4
    mount = after["mount"]
    assert 0 < mount["chunkfs_mount_cache_size_bytes"] <= mount["chunkfs_mount_cache_capacity_bytes"] == 8 * MiB

    with pytest.raises(FileNotFoundError):
        os.stat(cluster.mnt / "no-such-file")
    assert total(scrape(where["mount"]), "chunkfs_fuse_requests_total", op="lookup", result="ENOENT") >= 1

    path.unlink()  # deletion is garbage collection's to finish
    wait_until(lambda: total(scrape(where["metaserver"]), "chunkfs_gc_versions_deleted_total")
               - total(meta, "chunkfs_gc_versions_deleted_total") >= 4, 20,
               "the deleted file's 4 chunk versions collected (chunkfs_gc_versions_deleted_total)")
    assert total(scrape(where["chunkserver"]), "chunkfs_chunkserver_deleted_chunks_total") >= 4


def dashboard_metrics(dashboard: dict) -> set[str]:
    """The metric names in every panel's query."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}", "", expr)
        without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges):
            if word.startswith(("chunkfs_", "process_", "python_")):
                names.add(word)
    return names


def test_the_grafana_dashboard_uses_only_exported_metrics(small_cache_cluster):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["DS_PROMETHEUS"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("chunkservers up", "under goal", "capacity", "throughput", "requests", "latency p50 / p99",
                  "hit ratio", "re-replication", "deletions"):
        assert topic in titles, topic

    (small_cache_cluster.mnt / "dashboard-file").write_bytes(os.urandom(MiB))
    exported = set()
    for address in addresses(small_cache_cluster).values():
        exported |= {key.partition("{")[0] for key in scrape(address)}
    used = dashboard_metrics(dashboard)
    assert len(used) >= 25
    assert sorted(used - exported) == []
