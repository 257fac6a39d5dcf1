"""The metaserver's read-only status page: served without the secret, showing what matters."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import wait_until


def test_status_page_shows_servers_and_health(fresh_cluster):
    url = f"http://{fresh_cluster.metaserver}/"
    page = httpx.get(url).text
    assert "healthy" in page and "3 up, 0 down" in page and "clients mounted</th><td>1" in page
    (fresh_cluster.mnt / "f").write_bytes(os.urandom(1000))
    fresh_cluster.kill("cs3", signal.SIGKILL)
    fresh_cluster.wait_alive(2)
    page = httpx.get(url).text
    assert "degraded" in page and "DOWN" in page and "2 up, 1 down" in page
    assert httpx.post(url).status_code in (401, 405)  # read-only


def headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=60)


def bytes_written(cluster) -> float:
    """The bytes the throughput history shows written (a sample every 5 s)."""
    return sum(s["written_bytes_per_s"] * 5 for s in cluster.status()["throughput"]["samples"])


def test_status_page_in_a_real_browser(fresh_cluster, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    page = f"http://{fresh_cluster.metaserver}/"
    assert 'id="throughput-empty"' in httpx.get(page).text  # no traffic, no samples yet
    data = os.urandom(12 * 1024 * 1024)
    (fresh_cluster.mnt / "traffic").write_bytes(data)
    # goal 3: every replica counts; heartbeats bring the figures within seconds
    wait_until(lambda: bytes_written(fresh_cluster) >= 3 * len(data) * 0.95, 30,
               f"the throughput history shows the {3 * len(data)} bytes written to the replicas")
    status = fresh_cluster.status()["throughput"]
    assert status["interval_s"] == 5 and status["window_s"] == 900

    shot = tmp_path / "status.png"
    headless(browser, f"--screenshot={shot}", "--window-size=1100,1000", page)
    assert shot.exists() and shot.stat().st_size > 5000
    kept = Path(__file__).parent.parent / "test-output" / "status-page.png"  # outlives pytest's tmp dirs
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)
    print(f"status page screenshot: {kept}")
    dom = headless(browser, "--dump-dom", page).stdout  # what the browser parsed: the chart is drawn
    chart = re.search(r'<svg id="throughput".*?</svg>', dom, re.S)
    assert chart, dom[-2000:]
    assert re.search(r'<polyline class="write"[^>]* points="[0-9., ]+"', chart.group(0))
    assert re.search(r'<polyline class="read"[^>]* points="[0-9., ]+"', chart.group(0))
    assert "write " in chart.group(0) and "MB/s" in chart.group(0)
