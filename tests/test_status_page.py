"""The metaserver's read-only status page: served without the secret, showing what matters."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest


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


def test_status_page_in_a_real_browser(fresh_cluster, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    shot = tmp_path / "status.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,700",
                        f"http://{fresh_cluster.metaserver}/"], capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 5000
    print(f"status page screenshot: {shot}")
