"""`chunkfs bench` on two plain local directories, small: every figure comes back in the JSON,
with ratios for the compared directory, and nothing is left behind in either."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import wait_until

FIGURES = {"seq_write_mib_s", "cold_read_mib_s", "warm_read_mib_s", "random_read_iops", "create_files_s",
           "stat_files_s", "stat_cold_files_s", "unlink_files_s", "tree_cp_s", "tree_rsync_s", "tree_rm_s", "cp_in_mib_s",
           "cp_out_mib_s"}


def test_bench_reports_every_figure_and_cleans_up(tmp_path):
    subject, other = tmp_path / "subject", tmp_path / "other"
    subject.mkdir()
    other.mkdir()
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(subject), "--compare", str(other),
                             "--size-mb", "8", "--files", "50", "--tree-files", "200", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["directory"] == str(subject)
    assert report["settings"] == {"size_mb": 8, "files": 50, "tree_files": 200}
    assert set(report["units"]) == FIGURES
    assert set(report["results"]) == {str(subject), str(other)}
    for figures in report["results"].values():
        assert set(figures) == FIGURES
        assert all(value > 0 for value in figures.values())
    assert set(report["ratios"]) == {str(other)}
    assert set(report["ratios"][str(other)]) == FIGURES
    assert list(subject.iterdir()) == [] and list(other.iterdir()) == []


def test_bench_refuses_the_same_directory_twice(tmp_path):
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(tmp_path), "--compare", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "only once" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_runs_only_the_workloads_asked_for(tmp_path):
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(tmp_path), "--only", "small",
                             "--only", "tree", "--files", "20", "--tree-files", "50", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["results"][str(tmp_path)]
    assert set(figures) == {"create_files_s", "stat_files_s", "stat_cold_files_s", "unlink_files_s",
                            "tree_cp_s", "tree_rsync_s", "tree_rm_s"}
    assert list(tmp_path.iterdir()) == []


def test_bench_of_a_mount_reports_its_cpu_per_gib(cluster):
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(cluster.mnt), "--only", "data",
                             "--size-mb", "16", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["results"][str(cluster.mnt)]
    assert figures["seq_write_cpu_s_gib"] > 0
    assert figures["cold_read_cpu_s_gib"] > 0  # the cold read went through the mount (caches dropped)


def test_bench_runs_every_workload_through_the_plain_passthrough(tmp_path):
    """bench/passthrough.py, the yardstick of bench/run_local.sh, serves every workload; it
    unmounts on SIGTERM, and is unmounted here whatever happens."""
    import os
    import signal
    from pathlib import Path

    source, mountpoint = tmp_path / "source", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    script = Path(__file__).resolve().parent.parent / "bench" / "passthrough.py"
    daemon = subprocess.Popen([sys.executable, str(script), str(source), str(mountpoint)])
    try:
        wait_until(lambda: os.path.ismount(mountpoint) or daemon.poll() is not None, 10, "the passthrough mounted",
                   poll_s=0.05)
        assert daemon.poll() is None, "the passthrough ended without mounting"
        result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(mountpoint), "--size-mb", "8",
                                 "--files", "50", "--tree-files", "200", "--json"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert set(json.loads(result.stdout)["results"][str(mountpoint)]) == FIGURES
        assert list(source.iterdir()) == []
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert not os.path.ismount(mountpoint)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


def test_bench_of_a_mount_sets_put_get_and_the_api_beside_it(cluster):
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "bench", str(cluster.mnt), "--only", "client",
                             "--size-mb", "16", "--files", "20", "--json"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["results"][str(cluster.mnt)]
    assert set(figures) == {"cp_in_mib_s", "cp_out_mib_s", "put_mib_s", "get_mib_s", "api_write_mib_s",
                            "api_read_mib_s", "api_create_files_s", "put_per_cp_in", "get_per_cp_out"}
    assert figures["put_per_cp_in"] == figures["put_mib_s"] / figures["cp_in_mib_s"]
    assert all(value > 0 for value in figures.values())
    assert [p.name for p in cluster.mnt.iterdir()] == []


def test_door_ratios_set_each_door_beside_the_mount_where_both_were_measured():
    from chunkfs.bench import door_ratios

    figures = {"put_mib_s": 50.0, "cp_in_mib_s": 100.0, "get_mib_s": 300.0, "api_read_mib_s": 200.0,
               "cold_read_mib_s": 200.0, "api_create_files_s": 10.0}
    assert door_ratios(figures) == {"put_per_cp_in": 0.5, "get_per_cold_read": 1.5, "api_read_per_cold_read": 1.0}
