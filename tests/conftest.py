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
from line_process import LineProcess
from long_budget import LongBudget

# ceph's s3-tests, vendored: test_s3_compat.py runs them in a pytest of their own
collect_ignore = ["s3tests"]

CHUNKFS = [sys.executable, "-m", "chunkfs.cli"]


IN_CI = os.environ.get("CHUNKFS_CI") == "1"
"""Set by .ci/run: CI installed every tool and runs as root, so a test that skips for want of
something in its environment (root, a tool, network namespaces, xattrs, a browser) fails there."""


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="run the long randomized and large-file tests")
    parser.addoption("--long-budget-s", type=float, default=None,
                     help="seconds each long randomized test may spend on its examples, in batches "
                          "(tests/long_budget.py; make test-long gives LONG_BUDGET_S); default: every example")


def pytest_configure(config):
    config.addinivalue_line("markers", "long: only with --long (deselected, not skipped, without it)")
    config.addinivalue_line("markers", "tls_in_default_run: a netns fault test whose TLS variant runs without "
                                       "--long too (the `transport` fixture)")
    config.stash[_deselected_long] = 0


_deselected_long = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    """Without --long, the long tests are deselected (reported as such), so a skip always means
    a test could not run here. The TLS variants of the netns fault tests are long but for those
    marked `tls_in_default_run` (see `transport`)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (callspec is not None and callspec.params.get("transport") == "tls"
                and item.get_closest_marker("tls_in_default_run") is None):
            item.add_marker(pytest.mark.long)
    if config.getoption("--long"):
        return
    long_items = [item for item in items if "long" in item.keywords]
    if long_items:
        config.hook.pytest_deselected(items=long_items)
        items[:] = [item for item in items if "long" not in item.keywords]
    config.stash[_deselected_long] = len(long_items)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CHUNKFS_CI=1 a skip is a failure: CI must show that every test ran."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CHUNKFS_CI=1, where every test must run: {reason}"


def pytest_terminal_summary(terminalreporter, config):
    """One line CI can be read by: how many tests skipped (0 in CI), how many long ones were left
    out, and the random order's seed to run it again."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    seed = getattr(config.option, "randomly_seed", None)
    order = f"random order, again with -p randomly --randomly-seed={seed}" if seed is not None else "file order"
    for report in (r for reports in terminalreporter.stats.values() for r in reports):
        for name, line in getattr(report, "user_properties", ()):
            if name == _BUDGET_PROPERTY and report.when == "call":
                terminalreporter.write_line(f"{report.nodeid}: {line}")
    terminalreporter.write_line(
        f"chunkfs tests: {skipped} skipped, {config.stash[_deselected_long]} long tests deselected "
        f"(make test-long runs them); {order}")


@pytest.fixture
def long_budget(request) -> LongBudget:
    """`--long-budget-s` for a test marked `long`; no budget (every example) for any other. What
    each did is printed and listed at the end of the run (so make test-long's log shows it)."""
    long = request.node.get_closest_marker("long") is not None

    def tell(line: str) -> None:
        print(line)
        request.node.user_properties.append((_BUDGET_PROPERTY, line))

    return LongBudget(request.config.getoption("--long-budget-s") if long else None, tell)


_BUDGET_PROPERTY = "long_budget"


@pytest.fixture(scope="module", params=["plain", "tls"])
def transport(request) -> str:
    """How the parts of a netns cluster (tests/netns_cluster.py) talk: plain HTTP, or TLS with
    mutual authentication on every link (certificates of `chunkfs certs init` for the nodes'
    addresses), as `chunkfs up --tls` runs. A module's cluster fixture takes it, so each of its
    fault tests runs both ways; the TLS runs cost a second cluster per module and are `long`
    (make test-long), but for a few core faults marked `tls_in_default_run`."""
    return request.param


def free_port_block(count: int) -> int:
    """A base port with `count` free ports after it (and base+60 and +61, the gateway's S3 and
    REST ports, and base+100, the mount's metrics), on
    loopback, below the kernel's ephemeral range: a connect to a free ephemeral port can
    connect to itself and read its own request back."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(200):
        base = 10000 + int.from_bytes(os.urandom(2), "big") % (low - 10000 - 200)
        socks = []
        try:
            for port in [*range(base, base + count), base + 60, base + 61, base + 100]:
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


def calls_made(cluster, action) -> dict[str, float]:
    """The file-system calls the metaserver answered while `action()` ran, by operation (those
    of every client: the cluster's other clients should be idle)."""
    before = metaserver_calls(cluster)
    action()
    after = metaserver_calls(cluster)
    return {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}


def chunkserver_reads(cluster) -> dict[str, float]:
    """csN -> bytes it has served (its chunkfs_chunkserver_read_bytes_total); a server that is
    down is left out."""
    reads = {}
    for i in range(1, cluster.chunkservers + 1):
        try:
            reads[f"cs{i}"] = metrics_of(f"127.0.0.1:{cluster.port + i}")["chunkfs_chunkserver_read_bytes_total"]
        except OSError:
            continue
    return reads


def drop_caches(cluster) -> None:
    """Make the next read go to the servers: the kernel's page cache dropped, and the mount's
    chunk caches in memory and on disk (SIGUSR1 to it, as `chunkfs bench` does), waited for."""
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    os.kill(cluster.pid("mount"), signal.SIGUSR1)
    mount_metrics = f"127.0.0.1:{cluster.port + 100}"
    disk_cache = cluster.dir / "cache" / "chunks"
    wait_until(lambda: metrics_of(mount_metrics)["chunkfs_mount_cache_size_bytes"] == 0
               and not any(p for p in disk_cache.glob("*/*") if not p.name.endswith(".tmp")),
               10, "the mount's chunk caches (memory and disk) dropped")


def fsync_directory(path) -> None:
    """A durability point for everything the mount answered itself (write-behind) so far."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.3) -> float:
    """Seconds until `condition()` held; fails the test after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def sigint_as_at_a_terminal() -> None:
    """A `preexec_fn` for a child that a test interrupts with SIGINT (Ctrl-C): a shell running
    the tests in the background (`nohup ... &`) starts them with SIGINT ignored, which a child
    would inherit, and Python then raises no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def chunkfs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHUNKFS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"chunkfs {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


HOLD_OPEN = """
import sys
f = open(sys.argv[1], "wb", buffering=0)
print("open", flush=True)
for line in sys.stdin:
    command, _, text = line.rstrip("\\n").partition(" ")
    f.write(text.encode()) if command == "write" else f.close()
    print("done", flush=True)
"""


class OpenFileElsewhere(LineProcess):
    """A file held open for writing by a process of its own (see line_process.py)."""

    def __init__(self, path) -> None:
        super().__init__(HOLD_OPEN, path, ready="open")

    def ask(self, line: str) -> None:
        assert self.do(line) == "done"


class Cluster:
    """A local cluster under `root`: data in root/.chunkfs, mounted at root/mnt."""

    def __init__(self, root: Path, chunkservers: int = 3, goal: int = 3, mount_options: str = "retry_s=5",
                 up_options: tuple[str, ...] = (), gateway: bool = False):
        self.root = root
        self.dir = root / ".chunkfs"
        self.mnt = root / "mnt"
        self.chunkservers = chunkservers
        self.goal = goal
        self.mount_options = mount_options
        self.up_options = up_options  # more `chunkfs up` flags, e.g. ("--heartbeat-timeout-s", "3")
        # `chunkfs up` starts a gateway unless told not to; a test cluster has none unless it asks
        # (the gateway's client polls the change feed, which tests of the mount's polls count)
        self.gateway = gateway
        self.port = free_port_block(chunkservers + 1)

    @property
    def metaserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    def up(self) -> None:
        """Removed files are freed at once (no trash) unless `up_options` say otherwise: tests
        of deletion and space see chunks go as they did before the trash existed."""
        chunkfs("up", "--dir", self.dir, "--mount", self.mnt, "--chunkservers", self.chunkservers,
                "--goal", self.goal, "--port", self.port, "-o", self.mount_options, "--trash-time-s", "0",
                *self.up_options,
                *(() if self.gateway else ("--no-gateway",)))

    def down(self) -> None:
        chunkfs("down", "--dir", self.dir)

    def pid(self, name: str) -> int | None:
        return read_pid(self.dir / "run" / f"{name}.pid")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signals `name` and waits until it has ended (SIGTERM: its shutdown has run)."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)
        wait_until(lambda: self.pid(name) is None, 30, f"{name} ended after signal {sig}", poll_s=0.05)

    def status(self) -> dict:
        return json.loads(chunkfs("status", "--dir", self.dir, "--json").stdout)

    def wait_alive(self, count: int, timeout_s: float = 30) -> None:
        wait_until(lambda: sum(s["alive"] for s in self.status()["servers"]) == count, timeout_s,
                   f"{count} chunkservers alive (as `chunkfs status` says)")

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


@contextlib.contextmanager
def another_mount(cluster, target: Path, options: str = ""):
    """`cluster`'s filesystem mounted on `target` by a client of its own (its cache beside
    `target`, mount `options` added), unmounted at the end whatever happened."""
    chunkfs("mount", cluster.metaserver, target, "--secret-file", cluster.secret_file,
            "-o", ",".join([f"cache_dir={target}-cache", *filter(None, [options])]))
    try:
        yield target
    finally:
        unmount(target)


@pytest.fixture
def second_mount(cluster, tmp_path):
    """A second client: `cluster`'s filesystem mounted again, with a cache of its own."""
    with another_mount(cluster, tmp_path / "client-b") as target:
        yield target
