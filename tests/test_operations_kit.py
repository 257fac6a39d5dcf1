"""What an operator relies on: the systemd units load and are locked down, the daemons speak the
sd_notify protocol, /metrics answers without the secret, the example configs are current,
`chunkfs install --units` places everything, and a bad option stops a daemon with one line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from chunkfs import mounts, service
from chunkfs.cli import deploy
from chunkfs.daemons import stop_pid

from conftest import free_port_block, metrics_of

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
BIN = Path(sys.executable).parent
SERVER_UNITS = ("chunkfs-metaserver.service", "chunkfs-chunkserver@.service", "chunkfs-gateway.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


# ---- the units ---------------------------------------------------------------------------------

def unit_files() -> list[Path]:
    return sorted(UNITS.glob("*.service")) + sorted((UNITS / "examples").glob("*.mount"))


def runnable_copy(unit: Path, directory: Path) -> Path:
    """The unit with its commands pointing at this environment's scripts (the real ones name
    /usr/local/bin, which `chunkfs install --units` fills), as an instance if it is a template."""
    copy = directory / unit.name
    copy.write_text(unit.read_text().replace("/usr/local/bin/", f"{BIN}/"))
    return directory / unit.name.replace("@.", "@test.")


@needs_systemd_analyze
@pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", runnable_copy(unit, tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warned about


@needs_systemd_analyze
@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_units_are_locked_down(unit, tmp_path):
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", runnable_copy(unit, tmp_path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    if result.returncode != 0 and match is None:
        pytest.skip(f"systemd-analyze security --offline does not work here: {result.stderr.strip()}")
    exposure = float(match.group(1))
    print(f"{unit.name}: exposure {exposure}")
    if unit.name in SERVER_UNITS:
        assert exposure < 2.0, result.stdout
    else:  # the mount runs as root with CAP_SYS_ADMIN and in the host's mount namespace
        assert exposure < 5.0, result.stdout


def directives(unit: Path) -> list[str]:
    return [line for line in unit.read_text().splitlines() if line and not line.startswith(("#", "["))]


def test_units_say_what_operators_expect():
    for name in SERVER_UNITS:
        lines = directives(UNITS / name)
        for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "User=chunkfs",
                     "StateDirectory=chunkfs", "ProtectSystem=strict", "CapabilityBoundingSet=",
                     "NoNewPrivileges=yes", "SystemCallFilter=@system-service"):
            assert line in lines, (name, line)
    assert "ExecStart=/usr/local/bin/chunkfs-chunkserver --config /etc/chunkfs/chunkserver-%i.toml" in \
        directives(UNITS / "chunkfs-chunkserver@.service")
    mount = directives(UNITS / "chunkfs-mount@.service")
    assert "DeviceAllow=/dev/fuse rw" in mount and "Type=notify" in mount
    # a mount namespace of its own would hide the FUSE mount from everyone else
    assert not [line for line in mount if line.startswith(("User=", "ProtectSystem=", "PrivateTmp=", "ProtectHome="))]


# ---- example configs and install ---------------------------------------------------------------

@pytest.mark.parametrize("daemon", sorted(deploy.EXAMPLES))
def test_example_configs_are_what_config_example_prints(daemon):
    printed = subprocess.run([BIN / "chunkfs", "config-example", daemon], capture_output=True, text=True,
                             check=True).stdout
    assert (REPO / "etc" / f"{daemon}.toml").read_text() == printed, \
        f"etc/{daemon}.toml is stale: chunkfs config-example {daemon} > etc/{daemon}.toml"
    cls, _ = deploy.EXAMPLES[daemon]
    uncommented = re.sub(r"^#(\w+ = )", r"\1", printed, flags=re.M)
    values = tomllib.loads(uncommented)
    assert list(values) == [f.name for f in fields(cls)]
    for f in fields(cls):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        expected = "" if isinstance(default, Path) and not default.parts else \
            str(default) if isinstance(default, Path) else \
            [str(v) if isinstance(v, Path) else v for v in default] if isinstance(default, list) else default
        assert values[f.name] == expected, f.name


def test_install_units_places_units_links_and_configs_without_overwriting(tmp_path):
    root = tmp_path / "root"
    kept = root / "etc/chunkfs/metaserver.toml"
    kept.parent.mkdir(parents=True)
    kept.write_text('default_goal = 2\n')
    result = subprocess.run([BIN / "chunkfs", "install", "--units", "--root", root],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for unit in UNITS.glob("*.service"):
        assert (root / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    for name in ("chunkfs-metaserver", "chunkfs-chunkserver", "chunkfs-mount"):
        assert os.readlink(root / "usr/local/bin" / name) == str(BIN / name)
    assert kept.read_text() == 'default_goal = 2\n'
    assert (root / "etc/chunkfs/chunkserver.toml").read_text() == deploy.example_text("chunkserver")
    assert "u chunkfs" in (root / "etc/sysusers.d/chunkfs.conf").read_text()
    assert os.access(root / "sbin/mount.chunkfs", os.X_OK)
    assert "daemon-reload" not in result.stdout  # only ever on / with systemd running
    again = subprocess.run([BIN / "chunkfs", "install", "--units", "--root", root], capture_output=True, text=True)
    assert again.returncode == 0 and "kept" in again.stdout


# ---- configuration errors ----------------------------------------------------------------------

def test_a_bad_option_stops_the_metaserver_with_one_line_and_code_2(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s" * 64 + "\n")
    result = subprocess.run([BIN / "chunkfs-metaserver", "--default-goal", "99", "--secret-file", secret,
                             "--data-dir", tmp_path / "meta", "--listen", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "default_goal" in result.stderr, result.stderr
    config = tmp_path / "metaserver.toml"
    config.write_text('default_goal = "many"\n')
    result = subprocess.run([BIN / "chunkfs-metaserver", "--config", config, "--secret-file", secret],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "default_goal" in result.stderr and "\n" not in result.stderr.strip()


# ---- sd_notify ---------------------------------------------------------------------------------

class NotifySocket:
    """What systemd listens on for a Type=notify service."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def env(self, watchdog_usec: int = 400_000) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def wait_for(self, word: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            if word in message.split("\n") or message.startswith(word):
                return message
        raise AssertionError(f"no {word} within {timeout_s} s")

    def close(self) -> None:
        self.sock.close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_watchdog_is_pinged_every_half_watchdog_usec(tmp_path, monkeypatch):
    """Counted, not timed: the pings and the sleeps between them, with a sleep that ends the
    loop after three rounds."""
    import asyncio

    notify = NotifySocket(tmp_path / "watchdog.sock")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 3:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            asyncio.run(service.watchdog(sleep))
        assert slept == [0.2, 0.2, 0.2]
        assert [notify.wait_for("WATCHDOG=1", timeout_s=5) for _ in range(3)] == ["WATCHDOG=1"] * 3
    finally:
        notify.close()


def test_servers_say_ready_only_when_serving_ping_the_watchdog_and_say_stopping(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s" * 64 + "\n")
    port = free_port_block(2)
    stderr_path = tmp_path / "metaserver.log"
    procs = []
    try:
        with open(stderr_path, "wb") as stderr:
            st = os.fstat(stderr.fileno())
            notify = NotifySocket(tmp_path / "meta.sock")
            env = {**notify.env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            procs.append(subprocess.Popen(
                [BIN / "chunkfs-metaserver", "--listen", f"127.0.0.1:{port}", "--data-dir", tmp_path / "meta",
                 "--secret-file", secret], env=env, stderr=stderr))
        assert "READY=1" in notify.wait_for("READY=1")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200  # ready means serving
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")  # and again (every WATCHDOG_USEC / 2: the next test)

        cs_notify = NotifySocket(tmp_path / "cs.sock")
        procs.append(subprocess.Popen(
            [BIN / "chunkfs-chunkserver", "--listen", f"127.0.0.1:{port + 1}", "--data-dir", tmp_path / "cs",
             "--metaserver", f"127.0.0.1:{port}", "--secret-file", secret], env=cs_notify.env(),
            stderr=subprocess.DEVNULL))
        cs_notify.wait_for("READY=1")
        assert get(f"http://127.0.0.1:{port + 1}/health")[0] == 200
        cs_notify.wait_for("WATCHDOG=1")

        for proc, sock in zip(procs, (notify, cs_notify), strict=True):
            proc.send_signal(signal.SIGTERM)
            sock.wait_for("STOPPING=1")
            assert proc.wait(timeout=30) == 0
        log = stderr_path.read_text()
        assert log.startswith("<6>INFO chunkfs.metaserver: metaserver serving on"), log  # journald stamps it
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert service.watchdog_interval_s() is None
    service.notify_ready()  # no socket, no error
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert service.watchdog_interval_s() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert service.watchdog_interval_s() is None  # the watchdog is some other process's


# ---- a live cluster: /metrics and the mount's readiness ----------------------------------------

def test_metrics_answer_without_the_secret(cluster, tmp_path):
    data = os.urandom(5 * 1024 * 1024)
    (cluster.mnt / "metrics-file").write_bytes(data)
    assert (cluster.mnt / "metrics-file").read_bytes() == data
    os.listdir(cluster.mnt)
    assert get(f"http://{cluster.metaserver}/v1/status")[0] == 401  # the rest stays closed

    meta = metrics_of(cluster.metaserver)
    assert meta['chunkfs_cluster_chunkservers{state="up"}'] == 3
    assert meta['chunkfs_cluster_chunkservers{state="down"}'] == 0
    assert meta["chunkfs_cluster_chunks"] >= 2
    for name in ("chunkfs_cluster_chunks_under_goal", "chunkfs_cluster_pending_deletions",
                 "chunkfs_cluster_capacity_bytes", "chunkfs_cluster_free_bytes", "process_resident_memory_bytes"):
        assert name in meta, name
    assert meta["chunkfs_cluster_capacity_bytes"] > 0
    assert any(k.startswith('chunkfs_http_requests_total{op="lookup",route="/v1/fs/{op}"') for k in meta)
    assert any(k.startswith('chunkfs_http_request_duration_seconds_bucket{le="0.005",op="open"') for k in meta)

    chunkserver = metrics_of(f"127.0.0.1:{cluster.port + 1}")
    assert chunkserver["chunkfs_chunkserver_written_bytes_total"] >= len(data)
    assert chunkserver["chunkfs_chunkserver_chunks"] >= 2
    assert 0 < chunkserver["chunkfs_chunkserver_used_bytes"] <= chunkserver["chunkfs_chunkserver_capacity_bytes"]
    assert chunkserver['chunkfs_chunkserver_checksum_failures_total{where="disk"}'] == 0
    assert "chunkfs_chunkserver_read_bytes_total" in chunkserver
    assert any(k.startswith('chunkfs_http_requests_total{op="PUT",route="/v1/chunks/{chunk_id}/{version}"')
               for k in chunkserver)

    mount = metrics_of(f"127.0.0.1:{cluster.port + 100}")
    assert mount["chunkfs_mount_written_bytes_total"] >= 3 * len(data)  # goal 3: every replica counts
    for name in ("chunkfs_mount_read_bytes_total", "chunkfs_mount_cache_hits_total",
                 "chunkfs_mount_cache_misses_total", "chunkfs_mount_cache_size_bytes",
                 "chunkfs_mount_cache_capacity_bytes"):
        assert name in mount, name


def test_the_mount_says_ready_once_mounted_and_stopping_when_told_to_stop(cluster, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = subprocess.Popen([BIN / "chunkfs-mount", cluster.metaserver, mountpoint,
                             "--secret-file", cluster.secret_file, "--retry-s", "5", "--cache-dir", tmp_path / "cache"],
                            env=notify.env(), stderr=subprocess.DEVNULL)
    try:
        notify.wait_for("READY=1")
        assert mounts.is_mounted(mountpoint)
        os.listdir(mountpoint)  # and it answers
        notify.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proc.wait(timeout=30) == 0
        assert not mounts.is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid, timeout_s=5)
        if mounts.is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
        notify.close()


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (CI installs it)")
def test_vagrantfile_is_valid():
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO / "vagrant", capture_output=True, text=True,
                            timeout=120, env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
