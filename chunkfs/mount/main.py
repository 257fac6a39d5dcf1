"""`chunkfs-mount METASERVER MOUNTPOINT`: the FUSE client daemon, in the foreground.

Wires the protocol clients, the chunk cache and the Operations together, mounts, and serves
until unmounted (`fusermount3 -u`, `umount`) or sent SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pyfuse3
import trio

from chunkfs import DEFAULT_METASERVER_PORT, auth, metrics, mounts, service, tls
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, parse_addresses, setup_logging
from chunkfs.errors import FsError, TransportError
from chunkfs.client.chunk_cache import ChunkCache
from chunkfs.client.core import build_client
from chunkfs.client.disk_cache import CacheDirError, DiskChunkCache, auto_capacity_bytes, default_cache_dir
from chunkfs.mount.invalidator import KernelInvalidator
from chunkfs.mount.operations import ChunkfsOperations
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger("chunkfs.mount")
MiB = 1024 * 1024


@dataclass
class MountConfig:
    metaserver: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}",
                          "HOST:PORT of the metaserver (with failover: of each, comma-separated), or HOST:PORT:/SUBDIR to mount a subdirectory")
    mountpoint: Path = opt(Path(""), "directory to mount on")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"), "file holding the cluster secret")
    cache_mem_mb: int = opt(256, "MiB of chunks kept in memory (the hottest; the disk cache holds more)")
    cache_dir: Path = opt(Path(""), "directory of the chunk cache on local disk (empty: "
                                    "/var/cache/chunkfs/<metaserver>_<mountpoint>, ~/.cache/chunkfs/... if not root)")
    cache_size_mb: int = opt(-1, "MiB of chunks kept on local disk (-1: 10% of the free space there, "
                                 "at most 10 GiB; 0: no disk cache)")
    prefetch: bool = opt(True, "fetch chunks ahead of readers (small files whole, sequential readers "
                               "a growing window); off: only what is read")
    max_dirty_mb: int = opt(256, "MiB of written data held before it is stored; writers wait beyond it")
    dir_leases: bool = opt(True, "hold the directories this mount makes until another client needs them: "
                                 "lookups of new names and file creates there cost no call")
    write_behind_s: float = opt(0.0, "seconds within which changes this mount answers itself (small files closed, "
                                     "unlinks, renames and attribute changes in directories it holds the lease on) "
                                     "reach the metaserver's disk; 0: every change waits for it, as fsync does")
    sync_close: bool = opt(False, "every close waits until the file is durable on the metaserver, as an fsync")
    dedup: bool = opt(True, "a chunk whose content the cluster already holds (for this mount's key) is not "
                            "uploaded: the file refers to the stored one; off: no content hash, no call")
    entry_timeout_s: float = opt(60.0, "seconds the kernel may cache a name lookup (other clients' changes are pushed)")
    attr_timeout_s: float = opt(60.0, "seconds the kernel may cache attributes (other clients' changes are pushed)")
    retry_s: float = opt(15.0, "seconds a metadata call is retried before it fails with EIO")
    read_ahead_kb: int = opt(1024, "kernel read-ahead for the mount (FUSE reads of this size)")
    subdir: str = opt("/", "directory of the cluster shown as the mount's root")
    read_only: bool = opt(False, "mount read-only: every change fails with EROFS (mount option ro)")
    allow_other: bool = opt(True, "let users other than the mounting one use the mount (root only)")
    max_tasks: int = opt(64, "FUSE requests served at once")
    metrics_listen: str = opt("", "HOST:PORT to serve Prometheus /metrics on (empty: no metrics server)")
    tls_dir: str = opt("", "directory made by chunkfs certs init: connect with TLS, showing its client certificate")
    log_level: str = opt("info", "debug, info, warning or error")

    def validate(self) -> None:
        address, _, subdir = self.metaserver.partition(":/")
        if subdir:
            self.metaserver, self.subdir = address, "/" + subdir
        parse_addresses(self.metaserver, DEFAULT_METASERVER_PORT)
        if not self.subdir.startswith("/"):
            raise ConfigError(f"option subdir: {self.subdir!r} must start with /")
        if not str(self.mountpoint) or not self.mountpoint.is_dir():
            raise ConfigError(f"option mountpoint: {self.mountpoint} is not a directory")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")
        if self.cache_mem_mb < 8:
            raise ConfigError("option cache_mem_mb: at least 8")
        if self.cache_size_mb < -1:
            raise ConfigError("option cache_size_mb: -1 (automatic), 0 (no disk cache) or a size in MiB")
        if not 0 <= self.write_behind_s <= 5:
            raise ConfigError("option write_behind_s: 0 (off) to 5 seconds (a lease is trusted for 7)")
        if self.max_dirty_mb < 16:
            raise ConfigError("option max_dirty_mb: at least 16")
        if self.metrics_listen:
            parse_address(self.metrics_listen)
        try:
            tls.tls_files(self.tls_dir, "client")
        except ValueError as exc:
            raise ConfigError(f"option tls_dir: {exc}") from None


def open_disk_cache(config: MountConfig, mountpoint: Path) -> DiskChunkCache | None:
    """The disk tier as configured (None for cache_size_mb=0); exits with a message if its
    directory cannot be used."""
    if config.cache_size_mb == 0:
        return None
    directory = config.cache_dir if config.cache_dir.parts else default_cache_dir(config.metaserver, mountpoint)
    directory = directory.absolute()
    try:
        capacity = config.cache_size_mb * MiB if config.cache_size_mb > 0 else auto_capacity_bytes(directory)
        disk = DiskChunkCache(directory, capacity)
        disk.open()
    except (OSError, CacheDirError) as exc:
        click.echo(f"chunkfs-mount: option cache_dir: {exc}", err=True)
        sys.exit(2)
    return disk


async def raise_read_ahead(mountpoint: Path, read_ahead_kb: int) -> None:
    """FUSE reads arrive in 128 KiB requests unless the mount's bdi read-ahead is raised."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        path = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        await trio.to_thread.run_sync(path.write_text, str(read_ahead_kb))
    except OSError as exc:
        log.info("could not raise read-ahead (%s); reads stay at the kernel's default", exc)


async def serve(config: MountConfig, ops: ChunkfsOperations, http: SignedHttp,
                report: Callable[[], r.ClientReport], *background: Callable[[], Awaitable[None]]) -> None:
    client = ops.client
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run, *background)
        nursery.start_soon(client.meta.follow_changes, KernelInvalidator(ops), report)
        nursery.start_soon(raise_read_ahead, config.mountpoint, config.read_ahead_kb)
        nursery.start_soon(stop_on_signal)
        nursery.start_soon(drop_caches_on_sigusr1, client.cache)
        nursery.start_soon(service.watchdog, trio.sleep)
        service.notify_ready(f"{config.metaserver} mounted on {config.mountpoint}")
        await pyfuse3.main(min_tasks=4, max_tasks=config.max_tasks)
        service.notify_stopping()
        with trio.move_on_after(5):  # others need not wait for the leases to run out (sends the queue first)
            await client.meta.give_back_all()
        behind = client.meta.write_behind
        if behind is not None and not behind.idle:
            log.error("unmounted with %d changes answered here and never sent (the metaserver did not take them "
                      "within 5 s): they are lost", len(behind.queue) + len(behind.in_flight))
        nursery.cancel_scope.cancel()
    await http.aclose()


async def drop_caches_on_sigusr1(cache: ChunkCache) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _sig in signals:
            await cache.drop()
            log.info("chunk caches dropped (SIGUSR1)")


async def stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _sig in signals:
            pyfuse3.terminate()
            return


def mount_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    subdir = "" if config.subdir == "/" else ":" + config.subdir
    # a comma would end the option (libfuse splits -o at unescaped commas): a list of metaservers is escaped
    fsname = f"chunkfs:{config.metaserver}{subdir}".replace(",", "\\,")
    options |= {f"fsname={fsname}", "subtype=chunkfs", "noatime"}
    if config.read_only:
        options.add("ro")
    if config.allow_other and os.geteuid() == 0:
        options.add("allow_other")
    return options


@daemon_command(MountConfig, "Mount a chunkfs cluster (stays in the foreground; `mount -t chunkfs` backgrounds it).",
                positional=("metaserver", "mountpoint"))
def run(config: MountConfig) -> None:
    setup_logging(config.log_level)
    secret = auth.load_secret(config.secret_file)
    files = tls.tls_files(config.tls_dir, "client")
    context = files.client_context() if files else None
    http = SignedHttp(secret, timeout_s=60, retry_s=config.retry_s, trio_native=True, tls=context)
    client_id = uuid.uuid4().hex
    try:
        root_ino = trio.run(MetaClient(SignedHttp(secret, retry_s=5, trio_native=True, tls=context),
                                       config.metaserver).subtree_root, config.subdir)
    except TransportError as exc:
        click.echo(f"chunkfs-mount: cannot reach the metaserver at {config.metaserver}: {exc}", err=True)
        sys.exit(1)
    except FsError as exc:
        click.echo(f"chunkfs-mount: cannot mount {config.subdir}: {exc.message}", err=True)
        sys.exit(1)
    mountpoint = config.mountpoint.resolve()
    disk = open_disk_cache(config, mountpoint)
    client = build_client(http, config.metaserver, client_id=client_id, root_ino=root_ino,
                          entry_timeout_s=config.entry_timeout_s, attr_timeout_s=config.attr_timeout_s,
                          cache_mem_bytes=config.cache_mem_mb * MiB, disk=disk,
                          max_dirty_bytes=config.max_dirty_mb * MiB,
                          dir_leases=config.dir_leases and not config.read_only, prefetch=config.prefetch,
                          write_behind_s=config.write_behind_s, sync_close=config.sync_close, dedup=config.dedup)
    ops = ChunkfsOperations(client, entry_timeout_s=config.entry_timeout_s, attr_timeout_s=config.attr_timeout_s)
    pyfuse3.init(ops, str(mountpoint), mount_options(config))
    mounts.record(mountpoint, config.metaserver, config.secret_file.resolve(), os.getpid(), root_ino,
                  str(Path(config.tls_dir).resolve()) if config.tls_dir else "")
    log.info("mounted %s on %s", config.metaserver, config.mountpoint)
    stop_metrics = metrics.start_mount_metrics(config.metrics_listen, client.io, client.cache, ops,
                                               client.write_back)
    try:
        host = socket.gethostname()
        trio.run(serve, config, ops, http,
                 lambda: r.ClientReport(host=host, mountpoint=str(mountpoint), cache=client.cache.stats()),
                 *([disk.run] if disk else []))
    finally:
        if disk is not None:
            disk.close()
        stop_metrics()
        mounts.forget(mountpoint)
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
