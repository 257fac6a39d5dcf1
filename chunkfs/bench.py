"""The workloads of `chunkfs bench`: the same timed file operations in each directory, so a
chunkfs mount's figures can be set beside a local disk's or a tmpfs's.

Promises: wall time, and the CPU time of a chunkfs mount per GiB it wrote or read; every loop has a fixed bound (a count, or a count
and a deadline; `cp` and `rsync` run under a time-out); and nothing is left behind: a
directory's files live in one scratch directory made for the run and removed when the run ends
there, whether it succeeded or failed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from chunkfs.durable_files import fsync_directory
from chunkfs import mounts

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024
SMALL_FILE_BYTES = 4096
RANDOM_READ_BYTES = 4096
TREE_DIRS = 50
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
CLIENT_CACHE_DROP_S = 1.0


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Figure:
    """One measured number: `key` in JSON, `label` and `unit` in the table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


FIGURES = (
    Figure("seq_write_mib_s", "write, 1 MiB + fsync", "MiB/s", True),
    Figure("seq_write_cpu_s_gib", "write: the mount's CPU", "s/GiB", False),
    Figure("cold_read_mib_s", "read, cold", "MiB/s", True),
    Figure("cold_read_cpu_s_gib", "read, cold: the mount's CPU", "s/GiB", False),
    Figure("warm_read_mib_s", "read, warm", "MiB/s", True),
    Figure("random_read_iops", "random 4 KiB read, cold", "IOPS", True),
    Figure("create_files_s", "create 4 KiB files", "files/s", True),
    Figure("stat_files_s", "stat files", "files/s", True),
    Figure("stat_cold_files_s", "stat files, kernel caches dropped", "files/s", True),
    Figure("unlink_files_s", "unlink files", "files/s", True),
    Figure("tree_cp_s", "tree: cp -a", "s", False),
    Figure("tree_rsync_s", "tree: rsync -a, no-op", "s", False),
    Figure("tree_rm_s", "tree: rm -rf", "s", False),
    Figure("cp_in_mib_s", "cp of a local file into it", "MiB/s", True),
    Figure("cp_out_mib_s", "cp of a file out of it to local disk, cold", "MiB/s", True),
    Figure("put_mib_s", "chunkfs put (CLI, no mount)", "MiB/s", True),
    Figure("get_mib_s", "chunkfs get (CLI, no mount)", "MiB/s", True),
    Figure("api_write_mib_s", "API write, 1 MiB + close", "MiB/s", True),
    Figure("api_read_mib_s", "API read, new client", "MiB/s", True),
    Figure("api_create_files_s", "API create 4 KiB files", "files/s", True),
    Figure("put_per_cp_in", "put / cp into the mount", "×", True),
    Figure("get_per_cold_read", "get / the mount's cold read", "×", True),
    Figure("get_per_cp_out", "get / cp out of the mount", "×", True),
    Figure("api_write_per_seq_write", "API write / the mount's write", "×", True),
    Figure("api_read_per_cold_read", "API read / the mount's cold read", "×", True),
    Figure("api_creates_per_creates", "API creates / the mount's creates", "×", True),
    Figure("gw_curl_put_mib_s", "gateway: curl PUT (REST)", "MiB/s", True),
    Figure("gw_curl_get_mib_s", "gateway: curl GET (REST)", "MiB/s", True),
    Figure("gw_aws_put_mib_s", "gateway: aws s3 cp in (multipart)", "MiB/s", True),
    Figure("gw_aws_get_mib_s", "gateway: aws s3 cp out", "MiB/s", True),
    Figure("gw_put_objects_s", "gateway: 4 KiB object PUTs (S3)", "objects/s", True),
    Figure("gw_list_s", "gateway: list a prefix (10,000 keys unless told), 1,000 a page", "s", False),
    Figure("gw_list_raw_s", "gateway: the same listing, signed HTTP without botocore's parsing", "s", False),
    Figure("gw_rss_mib", "gateway: peak RSS under parallel uploads", "MiB", False),
    Figure("gw_put_per_seq_write", "gateway curl PUT / the mount's write", "×", True),
    Figure("gw_aws_put_per_seq_write", "gateway aws cp in / the mount's write", "×", True),
    Figure("gw_get_per_cold_read", "gateway curl GET / the mount's cold read", "×", True),
    Figure("gw_aws_get_per_cold_read", "gateway aws cp out / the mount's cold read", "×", True),
    Figure("gw_creates_per_creates", "gateway 4 KiB PUTs / the mount's creates", "×", True),
)
"""From `cp_in` on: the same cluster through its other doors (`client` group). `cp` in and out is
timed in every directory; put/get and the API only where the directory is a chunkfs mount, on
the cluster behind it, so they stand in its column beside the mount's own figures, and the last
six set each door beside the mount (`DOOR_RATIOS`: where both figures were measured in the run).
`get` writes a local file, as `cp` out of the mount does and the cold read (to nowhere) does not:
get/cp_out compares the same work."""

DOOR_RATIOS = {
    "put_per_cp_in": ("put_mib_s", "cp_in_mib_s"),
    "get_per_cold_read": ("get_mib_s", "cold_read_mib_s"),
    "get_per_cp_out": ("get_mib_s", "cp_out_mib_s"),
    "api_write_per_seq_write": ("api_write_mib_s", "seq_write_mib_s"),
    "api_read_per_cold_read": ("api_read_mib_s", "cold_read_mib_s"),
    "api_creates_per_creates": ("api_create_files_s", "create_files_s"),
    "gw_put_per_seq_write": ("gw_curl_put_mib_s", "seq_write_mib_s"),
    "gw_aws_put_per_seq_write": ("gw_aws_put_mib_s", "seq_write_mib_s"),
    "gw_get_per_cold_read": ("gw_curl_get_mib_s", "cold_read_mib_s"),
    "gw_aws_get_per_cold_read": ("gw_aws_get_mib_s", "cold_read_mib_s"),
    "gw_creates_per_creates": ("gw_put_objects_s", "create_files_s"),
}
"""A door's figure over the mount's figure for the same work (>= 1: the door is as fast or faster)."""


def door_ratios(figures: dict[str, float]) -> dict[str, float]:
    return {key: figures[door] / figures[mount] for key, (door, mount) in DOOR_RATIOS.items()
            if figures.get(door) and figures.get(mount)}


@dataclass(frozen=True)
class BenchSettings:
    size_mb: int = 1024
    files: int = 1000
    tree_files: int = 5000
    random_read_limit: int = 20000
    random_read_time_s: float = 5.0
    command_timeout_s: float = 1800.0
    groups: tuple[str, ...] = ("data", "small", "tree", "client", "gateway")  # which of GROUPS to run
    gateway: str = ""  # the gateway's S3 address (http://HOST:PORT) for the `gateway` group ("": none)
    gateway_key: str = ""  # its access key, ID:SECRET
    gateway_clients: int = 8  # parallel uploads while the gateway's RSS is watched (0: not measured)
    gateway_list_keys: int = 10_000  # keys in the prefix whose listing is timed


@dataclass
class DirectoryResult:
    directory: Path
    figures: dict[str, float] = field(default_factory=dict)
    page_cache_dropped: bool = False


@dataclass
class _Workspace:
    """What the steps of one directory share."""

    scratch: Path
    settings: BenchSettings
    tree_source: Path
    local_file: Path  # size_mb MiB on local disk, made once a run for the `client` group
    page_cache_dropped: bool = True

    @property
    def big_file(self) -> Path:
        return self.scratch / "sequential"

    @property
    def tree_copy(self) -> Path:
        return self.scratch / "tree"


def drop_client_cache(directory: Path) -> bool:
    """Drop the chunk caches (memory and disk) of the chunkfs mount holding `directory`, if it is
    one: SIGUSR1 to its daemon, which clears them within moments."""
    record = mounts.find(directory)
    if record is None:
        return False
    try:
        os.kill(record["pid"], signal.SIGUSR1)
    except OSError as exc:
        log.warning("cannot drop the chunk cache of %s: %s", directory, exc)
        return False
    time.sleep(CLIENT_CACHE_DROP_S)
    return True


def drop_page_cache() -> bool:
    """Drop the kernel's clean page cache, dentries and inodes (needs root)."""
    if os.geteuid() != 0:
        return False
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        log.warning("cannot drop the page cache: %s", exc)
        return False
    return True


def mount_cpu_s(directory: Path) -> float | None:
    """CPU seconds (user + system) the chunkfs mount holding `directory` has used, if it is one."""
    record = mounts.find(directory)
    if record is None:
        return None
    try:
        fields = Path(f"/proc/{record['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_per_gib(key: str, directory: Path, before: float | None, size_mb: int) -> dict[str, float]:
    after = mount_cpu_s(directory)
    if before is None or after is None:
        return {}
    return {key: (after - before) / (size_mb / 1024)}


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        if written <= 0:
            raise BenchError("a write wrote nothing")
        data = data[written:]


def unique_mibs(count: int) -> Iterator[memoryview]:
    """`count` MiB of random-looking bytes, no two MiB alike (one random MiB, its first 8 bytes
    a counter): written data that dedup cannot share, at no cost per MiB."""
    block = bytearray(os.urandom(MiB))
    for i in range(count):
        block[:8] = i.to_bytes(8, "little")
        yield memoryview(block)


def _read_through(path: Path, expected_bytes: int) -> float:
    """Read `path` start to end in 1 MiB reads; MiB/s."""
    buffer = bytearray(MiB)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while total < expected_bytes:
            n = f.readinto(buffer)
            if not n:
                break
            total += n
    elapsed = time.perf_counter() - start
    if total != expected_bytes:
        raise BenchError(f"{path}: read {total} bytes, wrote {expected_bytes}")
    return total / MiB / elapsed


def _sequential_write(ws: _Workspace) -> dict[str, float]:
    cpu = mount_cpu_s(ws.scratch)
    start = time.perf_counter()
    fd = os.open(ws.big_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in unique_mibs(ws.settings.size_mb):
            _write_all(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"seq_write_mib_s": ws.settings.size_mb / (time.perf_counter() - start),
            **_cpu_per_gib("seq_write_cpu_s_gib", ws.scratch, cpu, ws.settings.size_mb)}


def _cold_read(ws: _Workspace) -> dict[str, float]:
    drop_client_cache(ws.big_file.parent)
    ws.page_cache_dropped = drop_page_cache()
    cpu = mount_cpu_s(ws.scratch)
    return {"cold_read_mib_s": _read_through(ws.big_file, ws.settings.size_mb * MiB),
            **_cpu_per_gib("cold_read_cpu_s_gib", ws.scratch, cpu, ws.settings.size_mb)}


def _warm_read(ws: _Workspace) -> dict[str, float]:
    return {"warm_read_mib_s": _read_through(ws.big_file, ws.settings.size_mb * MiB)}


def _random_reads(ws: _Workspace) -> dict[str, float]:
    """4 KiB reads at random aligned offsets, after dropping the page cache, until the read or
    the time limit is reached."""
    drop_page_cache()
    blocks = ws.settings.size_mb * MiB // RANDOM_READ_BYTES
    rng = random.Random(0)
    reads = 0
    fd = os.open(ws.big_file, os.O_RDONLY)
    try:
        start = time.perf_counter()
        deadline = start + ws.settings.random_read_time_s
        while reads < ws.settings.random_read_limit:
            os.pread(fd, RANDOM_READ_BYTES, rng.randrange(blocks) * RANDOM_READ_BYTES)
            reads += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"random_read_iops": reads / elapsed}


def _per_second(paths: list[T], operation: Callable[[T], object]) -> float:
    start = time.perf_counter()
    for path in paths:
        operation(path)
    return len(paths) / (time.perf_counter() - start)


def _small_files(ws: _Workspace) -> dict[str, float]:
    folder = ws.scratch / "small"
    folder.mkdir()
    paths = [folder / f"f{i:06d}" for i in range(ws.settings.files)]
    data = memoryview(os.urandom(SMALL_FILE_BYTES))

    def create(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    figures = {"create_files_s": _per_second(paths, create)}
    # not timed: with write-behind (-o write_behind_s) the creates' batch goes now, not within the stats after them
    fsync_directory(folder)
    figures["stat_files_s"] = _per_second(paths, os.stat)
    if not drop_page_cache():  # also drops the kernel's dentries and inodes
        ws.page_cache_dropped = False
    figures["stat_cold_files_s"] = _per_second(paths, os.stat)
    figures["unlink_files_s"] = _per_second(paths, os.unlink)
    folder.rmdir()
    return figures


def _timed_command(command: list[str], timeout_s: float) -> float:
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout_s, env=_user_environment())
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"{' '.join(command)} exited with {exc.returncode}: {exc.stderr.strip()[-500:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(command)} took longer than {timeout_s:.0f} s") from exc
    return time.perf_counter() - start


def _tree_cp(ws: _Workspace) -> dict[str, float]:
    return {"tree_cp_s": _timed_command(["cp", "-a", str(ws.tree_source), str(ws.tree_copy)],
                                        ws.settings.command_timeout_s)}


def _tree_rsync(ws: _Workspace) -> dict[str, float]:
    return {"tree_rsync_s": _timed_command(["rsync", "-a", f"{ws.tree_source}/", f"{ws.tree_copy}/"],
                                           ws.settings.command_timeout_s)}


def _tree_rm(ws: _Workspace) -> dict[str, float]:
    return {"tree_rm_s": _timed_command(["rm", "-rf", str(ws.tree_copy)], ws.settings.command_timeout_s)}


def _cp_in(ws: _Workspace) -> dict[str, float]:
    """`cp` of a local file (in the page cache) into the directory: what a user compares `put`
    with. The copy stays until the scratch directory goes: removed here, its chunks would be
    deleted on the chunkservers while `put` is timed right after."""
    elapsed = _timed_command(["cp", str(ws.local_file), str(ws.scratch / "cp-in")], ws.settings.command_timeout_s)
    return {"cp_in_mib_s": ws.settings.size_mb / elapsed}


def _cp_out(ws: _Workspace) -> dict[str, float]:
    """`cp` of the file `_cp_in` made out to local disk, its caches dropped first (the mount's
    and, as root, the kernel's): what a user compares `get` with."""
    drop_client_cache(ws.scratch)
    if not drop_page_cache():
        ws.page_cache_dropped = False
    target = ws.local_file.with_name("cp-out")
    try:
        elapsed = _timed_command(["cp", str(ws.scratch / "cp-in"), str(target)], ws.settings.command_timeout_s)
    finally:
        target.unlink(missing_ok=True)
    return {"cp_out_mib_s": ws.settings.size_mb / elapsed}


def _cluster_behind(directory: Path) -> tuple[str, str, str] | None:
    """(metaserver, secret file, cluster path of `directory`) if it is in a chunkfs mount of a
    cluster's root."""
    record = mounts.find(directory)
    if record is None or record.get("root_ino", 1) != 1:
        return None
    below = os.path.relpath(directory, record["mountpoint"])
    return record["metaserver"], record["secret_file"], "/" + ("" if below == "." else below)


def _user_environment() -> dict[str, str]:
    """This environment without PYTHONDONTWRITEBYTECODE: a timed `chunkfs put` starts as on a
    user's machine, from cached bytecode (with the variable set, as in some sandboxes and
    containers, each start compiled chunkfs's modules again: 0.45 s against 0.18 s)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _chunkfs_command() -> list[str]:
    """The `chunkfs` command as a user runs it: the script installed beside this interpreter
    (else the same code through `python -m chunkfs.cli`)."""
    script = Path(sys.executable).with_name("chunkfs")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "chunkfs.cli"]


def _client_doors(ws: _Workspace) -> dict[str, float]:
    """The CLI's put and get (whole commands, the interpreter's start included) and the Python
    API's sequential write, read and small-file creates, on the cluster behind the mount."""
    cluster = _cluster_behind(ws.scratch)
    if cluster is None:
        return {}
    from chunkfs import client

    metaserver, secret_file, scratch = cluster
    cli = _chunkfs_command()
    where = ["--metaserver", metaserver, "--secret-file", secret_file]
    size_mb, timeout_s = ws.settings.size_mb, ws.settings.command_timeout_s
    put_source = put_file_of(ws.local_file)  # not the bytes `cp` copied in: dedup would upload nothing
    _timed_command([*cli, "ls", scratch, *where], timeout_s)  # its bytecode written and read, as a user's is
    figures = {"put_mib_s": size_mb / _timed_command([*cli, "put", str(put_source), f"{scratch}/put", *where],
                                                     timeout_s)}
    back = ws.local_file.with_name("got")
    if drop_page_cache():  # cold data, as the mount's cold read and cp out (a new process has no chunk cache)
        _timed_command([*cli, "ls", scratch, *where], timeout_s)  # but the CLI's own code read back, as a user has it
    try:
        figures["get_mib_s"] = size_mb / _timed_command([*cli, "get", f"{scratch}/put", str(back), *where], timeout_s)
    finally:
        back.unlink(missing_ok=True)
    with client.connect(metaserver, secret_file=secret_file) as fs:
        start = time.perf_counter()
        with fs.open(f"{scratch}/api", "wb") as f:
            for block in unique_mibs(size_mb):
                f.write(block)
        figures["api_write_mib_s"] = size_mb / (time.perf_counter() - start)
        fs.mkdir(f"{scratch}/api-small")
        small = os.urandom(SMALL_FILE_BYTES)

        def create(path: str) -> None:
            with fs.open(path, "xb") as f:
                f.write(small)
        figures["api_create_files_s"] = _per_second([f"{scratch}/api-small/f{i:06d}" for i in range(ws.settings.files)],
                                                    create)
    with client.connect(metaserver, secret_file=secret_file) as fs:  # a new client: nothing cached
        buffer = bytearray(MiB)
        total = 0
        start = time.perf_counter()
        with fs.open(f"{scratch}/api", "rb") as f:
            while n := f.readinto(buffer):
                total += n
        figures["api_read_mib_s"] = total / MiB / (time.perf_counter() - start)
    if total != size_mb * MiB:
        raise BenchError(f"API read {total} bytes of {size_mb * MiB}")
    return figures


def _gateway(ws: _Workspace) -> dict[str, float]:
    """The gateway's workloads (`bench_gateway.py`) on the cluster behind the mount, when given one."""
    if not ws.settings.gateway:
        return {}
    from chunkfs import bench_gateway

    record = mounts.find(ws.scratch)
    target = bench_gateway.GatewayTarget.parse(ws.settings.gateway, ws.settings.gateway_key)
    try:
        return bench_gateway.run(target, Path(record["mountpoint"]) if record else None, ws.local_file,
                                 ws.settings.size_mb, ws.settings.files, ws.settings.gateway_clients,
                                 ws.settings.gateway_list_keys, ws.settings.command_timeout_s)
    except bench_gateway.GatewayBenchError as exc:
        raise BenchError(str(exc)) from exc


STEPS: tuple[tuple[str, Callable[[_Workspace], dict[str, float]]], ...] = (
    ("sequential write", _sequential_write),
    ("cold read", _cold_read),
    ("warm read", _warm_read),
    ("random reads", _random_reads),
    ("small files", _small_files),
    ("tree cp -a", _tree_cp),
    ("tree rsync -a", _tree_rsync),
    ("tree rm -rf", _tree_rm),
    ("cp of a local file in", _cp_in),
    ("cp of a file out", _cp_out),
    ("put, get and the API", _client_doors),
    ("the gateway", _gateway),
)
GROUPS = {"data": STEPS[:4], "small": STEPS[4:5], "tree": STEPS[5:8], "client": STEPS[8:11], "gateway": STEPS[11:]}
"""Steps that can be run alone (`chunkfs bench --only`): big-file data, small files, the tree,
the cluster's other doors (CLI and API) beside `cp`."""


def steps_of(settings: BenchSettings) -> list[tuple[str, Callable[[_Workspace], dict[str, float]]]]:
    return [step for group in GROUPS if group in settings.groups for step in GROUPS[group]]

StepHook = Callable[[int, str], None]
"""Called before each step with the number of steps done so far in the run and what starts."""


def make_tree(root: Path, files: int) -> None:
    """`files` small files spread over up to TREE_DIRS directories under `root`."""
    data = os.urandom(SMALL_FILE_BYTES)
    dirs = min(TREE_DIRS, files)
    for d in range(dirs):
        (root / f"d{d:02d}").mkdir(parents=True)
    for i in range(files):
        (root / f"d{i % dirs:02d}" / f"f{i:05d}").write_bytes(data)


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def measure(directory: Path, settings: BenchSettings, tree_source: Path, local_file: Path,
            on_step: StepHook, steps_before: int = 0) -> DirectoryResult:
    """Every step in a fresh scratch directory under `directory`, removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=".chunkfs-bench-", dir=directory))
    ws = _Workspace(scratch, settings, tree_source, local_file)
    result = DirectoryResult(directory)
    try:
        for i, (name, step) in enumerate(steps_of(settings)):
            on_step(steps_before + i, f"{directory}: {name}")
            result.figures.update(step(ws))
        result.figures.update(door_ratios(result.figures))
    finally:
        _remove(scratch)
    result.page_cache_dropped = ws.page_cache_dropped
    return result


def run(directories: list[Path], settings: BenchSettings,
        on_step: StepHook = lambda done, what: None) -> list[DirectoryResult]:
    """The workloads in each directory in turn; the tree to copy and the local file to put are
    made once, in the system's temporary directory, and removed at the end."""
    tree_source = Path(tempfile.mkdtemp(prefix="chunkfs-bench-tree-"))
    local_files = Path(tempfile.mkdtemp(prefix="chunkfs-bench-local-"))
    try:
        if "tree" in settings.groups:
            make_tree(tree_source, settings.tree_files)
        if "client" in settings.groups or "gateway" in settings.groups:
            make_local_file(local_files / "source", settings.size_mb)
            make_local_file(put_file_of(local_files / "source"), settings.size_mb)
        steps = len(steps_of(settings))
        return [measure(d, settings, tree_source, local_files / "source", on_step, i * steps)
                for i, d in enumerate(directories)]
    finally:
        _remove(tree_source)
        _remove(local_files)


def put_file_of(local_file: Path) -> Path:
    """The local file `chunkfs put` copies in: other bytes than `local_file`'s (which `cp` copies)."""
    return local_file.with_name(local_file.name + "-put")


def make_local_file(path: Path, size_mb: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for block in unique_mibs(size_mb):
            _write_all(fd, block)
    finally:
        os.close(fd)


def ratios(subject: DirectoryResult, other: DirectoryResult) -> dict[str, float | None]:
    """subject / other for each figure (None where other measured zero)."""
    return {key: (value / other.figures[key] if other.figures.get(key) else None)
            for key, value in subject.figures.items()}
