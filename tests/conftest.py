"""Fixtures that run the real thing: `chunkfs up` starts real daemons and a real FUSE mount in a
temporary directory; every fixture takes it all down again, even when the test failed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chunkfs.daemons import abort_fuse_connection, read_pid, stop_pid, unmount

CHUNKFS = [sys.executable, "-m", "chunkfs.cli"]


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="run the long randomized and large-file tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "long: only with --long")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long test: run with --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def free_port_block(count: int) -> int:
    """A base port with `count` free ports after it (and base+100, the mount's metrics), on
    loopback, below the kernel's ephemeral range: a connect to a free ephemeral port can
    connect to itself and read its own request back."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(200):
        base = 10000 + int.from_bytes(os.urandom(2), "big") % (low - 10000 - 200)
        socks = []
        try:
            for port in [*range(base, base + count), base + 100]:
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def metrics_of(address: str) -> dict[str, float]:
    """`name{label="v",...}` -> value, from an unauthenticated GET /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metaserver_calls(cluster) -> dict[str, float]:
    """File-system calls the metaserver answered so far, by operation (from its /metrics)."""
    calls: dict[str, float] = {}
    for key, value in metrics_of(cluster.metaserver).items():
        if key.startswith("chunkfs_http_requests_total{") and 'route="/v1/fs/{op}"' in key:
            op = key.split('op="', 1)[1].split('"', 1)[0]
            calls[op] = calls.get(op, 0) + value
    return calls


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.3) -> float:
    """Seconds until `condition()` held; fails the test after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def chunkfs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHUNKFS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"chunkfs {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


class Cluster:
    """A local cluster under `root`: data in root/.chunkfs, mounted at root/mnt."""

    def __init__(self, root: Path, chunkservers: int = 3, goal: int = 3, mount_options: str = "retry_s=5",
                 up_options: tuple[str, ...] = ()):
        self.root = root
        self.dir = root / ".chunkfs"
        self.mnt = root / "mnt"
        self.chunkservers = chunkservers
        self.goal = goal
        self.mount_options = mount_options
        self.up_options = up_options  # more `chunkfs up` flags, e.g. ("--heartbeat-timeout-s", "3")
        self.port = free_port_block(chunkservers + 1)

    @property
    def metaserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    def up(self) -> None:
        chunkfs("up", "--dir", self.dir, "--mount", self.mnt, "--chunkservers", self.chunkservers,
                "--goal", self.goal, "--port", self.port, "-o", self.mount_options, *self.up_options)

    def down(self) -> None:
        chunkfs("down", "--dir", self.dir)

    def pid(self, name: str) -> int | None:
        return read_pid(self.dir / "run" / f"{name}.pid")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)
        for _ in range(100):
            if read_pid(self.dir / "run" / f"{name}.pid") is None:
                return
            time.sleep(0.05)

    def status(self) -> dict:
        return json.loads(chunkfs("status", "--dir", self.dir, "--json").stdout)

    def wait_alive(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(s["alive"] for s in self.status()["servers"]) == count:
                return
            time.sleep(0.3)
        raise AssertionError(f"expected {count} chunkservers alive: {self.status()['servers']}")

    def cleanup(self) -> None:
        """Take everything down, whatever state the test left it in."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            chunkfs("down", "--dir", self.dir, check=False, timeout=60)
        if os.path.ismount(self.mnt) or _in_proc_mounts(self.mnt):
            abort_fuse_connection(self.mnt)
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        for pid_file in (self.dir / "run").glob("*.pid"):
            pid = read_pid(pid_file)
            if pid is not None:
                stop_pid(pid, timeout_s=3)


def _in_proc_mounts(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _cluster(tmp_path_factory, **kwargs):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), **kwargs)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster shared by a module's tests that do not disturb it."""
    yield from _cluster(tmp_path_factory)


@pytest.fixture
def fresh_cluster(tmp_path_factory, request):
    """A cluster of its own, for tests that kill or restart things; `Cluster` arguments can be
    given with `@pytest.mark.parametrize("fresh_cluster", [{...}], indirect=True)`."""
    yield from _cluster(tmp_path_factory, **getattr(request, "param", {}))


@pytest.fixture
def second_mount(cluster, tmp_path):
    """A second client: `cluster`'s filesystem mounted again, with a cache of its own."""
    target = tmp_path / "client-b"
    chunkfs("mount", cluster.metaserver, target, "--secret-file", cluster.secret_file,
            "-o", f"cache_dir={tmp_path / 'cache-b'}")
    try:
        yield target
    finally:
        unmount(target)
