"""`chunkfs-mount METASERVER MOUNTPOINT`: the FUSE client daemon, in the foreground.

Wires the protocol clients, the chunk cache and the Operations together, mounts, and serves
until unmounted (`fusermount3 -u`, `umount`) or sent SIGTERM/SIGINT.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
import pyfuse3
import trio

from chunkfs import DEFAULT_METASERVER_PORT, auth, metrics, mounts, service
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, setup_logging
from chunkfs.errors import FsError, TransportError
from chunkfs.mount.chunk_cache import ChunkCache
from chunkfs.mount.chunk_io import ChunkIO
from chunkfs.mount.invalidator import Invalidator
from chunkfs.mount.operations import ChunkfsOperations
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger("chunkfs.mount")


@dataclass
class MountConfig:
    metaserver: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}", "HOST:PORT of the metaserver")
    mountpoint: Path = opt(Path(""), "directory to mount on")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"), "file holding the cluster secret")
    cache_mem_mb: int = opt(256, "MiB of chunks kept in memory")
    entry_timeout_s: float = opt(60.0, "seconds the kernel may cache a name lookup (other clients' changes are pushed)")
    attr_timeout_s: float = opt(60.0, "seconds the kernel may cache attributes (other clients' changes are pushed)")
    retry_s: float = opt(15.0, "seconds a metadata call is retried before it fails with EIO")
    read_ahead_kb: int = opt(1024, "kernel read-ahead for the mount (FUSE reads of this size)")
    allow_other: bool = opt(True, "let users other than the mounting one use the mount (root only)")
    max_tasks: int = opt(64, "FUSE requests served at once")
    metrics_listen: str = opt("", "HOST:PORT to serve Prometheus /metrics on (empty: no metrics server)")
    log_level: str = opt("info", "debug, info, warning or error")

    def validate(self) -> None:
        parse_address(self.metaserver, DEFAULT_METASERVER_PORT)
        if not str(self.mountpoint) or not self.mountpoint.is_dir():
            raise ConfigError(f"option mountpoint: {self.mountpoint} is not a directory")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")
        if self.cache_mem_mb < 8:
            raise ConfigError("option cache_mem_mb: at least 8")
        if self.metrics_listen:
            parse_address(self.metrics_listen)


async def raise_read_ahead(mountpoint: Path, read_ahead_kb: int) -> None:
    """FUSE reads arrive in 128 KiB requests unless the mount's bdi read-ahead is raised."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        path = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        await trio.to_thread.run_sync(path.write_text, str(read_ahead_kb))
    except OSError as exc:
        log.info("could not raise read-ahead (%s); reads stay at the kernel's default", exc)


async def serve(config: MountConfig, ops: ChunkfsOperations, http: SignedHttp,
                invalidator: Invalidator) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(invalidator.run)
        nursery.start_soon(raise_read_ahead, config.mountpoint, config.read_ahead_kb)
        nursery.start_soon(stop_on_signal)
        nursery.start_soon(service.watchdog, trio.sleep)
        service.notify_ready(f"{config.metaserver} mounted on {config.mountpoint}")
        await pyfuse3.main(min_tasks=4, max_tasks=config.max_tasks)
        service.notify_stopping()
        nursery.cancel_scope.cancel()
    await http.aclose()


async def stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _sig in signals:
            pyfuse3.terminate()
            return


async def check_cluster(meta: MetaClient) -> None:
    await meta.getattr(1)


def mount_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname=chunkfs:{config.metaserver}", "subtype=chunkfs", "noatime"}
    if config.allow_other and os.geteuid() == 0:
        options.add("allow_other")
    return options


@daemon_command(MountConfig, "Mount a chunkfs cluster (stays in the foreground; `mount -t chunkfs` backgrounds it).",
                positional=("metaserver", "mountpoint"))
def run(config: MountConfig) -> None:
    setup_logging(config.log_level)
    secret = auth.load_secret(config.secret_file)
    http = SignedHttp(secret, timeout_s=60, retry_s=config.retry_s, trio_native=True)
    client_id = uuid.uuid4().hex
    meta = MetaClient(http, config.metaserver, client_id)
    io = ChunkIO(meta, ChunkClient(http))
    cache = ChunkCache(io, config.cache_mem_mb * 1024 * 1024)
    ops = ChunkfsOperations(meta, io, cache, entry_timeout_s=config.entry_timeout_s,
                            attr_timeout_s=config.attr_timeout_s)
    try:
        trio.run(check_cluster, MetaClient(SignedHttp(secret, retry_s=5, trio_native=True), config.metaserver))
    except (FsError, TransportError) as exc:
        click.echo(f"chunkfs-mount: cannot reach the metaserver at {config.metaserver}: {exc}", err=True)
        sys.exit(1)
    mountpoint = config.mountpoint.resolve()
    pyfuse3.init(ops, str(mountpoint), mount_options(config))
    mounts.record(mountpoint, config.metaserver, config.secret_file.resolve(), os.getpid())
    log.info("mounted %s on %s", config.metaserver, config.mountpoint)
    stop_metrics = metrics.start_mount_metrics(config.metrics_listen, io, cache)
    try:
        invalidator = Invalidator(meta, client_id, ops.known_inodes, ops.forget_cached)
        trio.run(serve, config, ops, http, invalidator)
    finally:
        stop_metrics()
        mounts.forget(mountpoint)
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
