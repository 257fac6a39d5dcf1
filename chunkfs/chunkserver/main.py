"""`chunkfs-chunkserver`: load the configuration, open the chunk store, serve."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from chunkfs import DEFAULT_METASERVER_PORT, auth, metrics, service, tls
from chunkfs.chunkserver.app import build_app
from chunkfs.chunkserver.heartbeat import Heartbeat
from chunkfs.chunkserver.scrubber import CorruptionReporter, Scrubber
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, parse_addresses, setup_logging
from chunkfs.errors import FsError
from chunkfs.chunkserver.access import ChunkKeys
from chunkfs.chunkserver.fencing import Fence
from chunkfs.httpserver import (BODY_TIMEOUT_HELP, DEFAULT_BODY_TIMEOUT_S, STATUS_ACCESS, STATUS_ACCESS_HELP, serve,
                                status_access)
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger("chunkfs.chunkserver")

DEFAULT_DATA_DIR = Path("/var/lib/chunkfs/chunks")


@dataclass
class ChunkserverConfig:
    listen: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT + 1}", "HOST:PORT to serve chunks on")
    advertise: str = opt("", "HOST:PORT clients and peers use to reach this server [default: listen]")
    data_dirs: list[Path] = opt([DEFAULT_DATA_DIR],
                                "directories the chunks are stored in, one per disk; a new chunk goes to the "
                                "one with the most free space")
    data_dir: Path = opt(Path(""), "a single directory for the chunks: the same as data_dirs = [data_dir]")
    metaserver: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}", "HOST:PORT of the metaserver (with failover: of each, comma-separated)")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"),
                            "file holding this chunkserver's credential (chunkfs credentials add chunkserver NAME) "
                            "or the cluster secret")
    status_access: str = opt("loopback", STATUS_ACCESS_HELP)
    tls_dir: Path = opt(Path(""), "directory made by chunkfs certs init: serve and connect with TLS only, "
                                  "peers must show a certificate of its CA (empty: plain HTTP)")
    heartbeat_interval_s: float = opt(2.0, "seconds between heartbeats to the metaserver")
    scrub_mb_per_s: float = opt(50.0, "MiB/s at most re-read to verify stored chunks in the background; 0 is off")
    scrub_interval_s: float = opt(86400.0, "seconds at least from the start of one scrub pass over every chunk to the "
                                           "start of the next")
    body_timeout_s: float = opt(DEFAULT_BODY_TIMEOUT_S, BODY_TIMEOUT_HELP)
    log_level: str = opt("info", "debug, info, warning or error")

    def validate(self) -> None:
        if self.data_dir.parts:  # Path("") when not given
            if self.data_dirs not in ([DEFAULT_DATA_DIR], [self.data_dir]):
                raise ConfigError("options data_dir and data_dirs: give one of them, not both")
            self.data_dirs = [self.data_dir]
        if not self.data_dirs:
            raise ConfigError("option data_dirs: at least one directory")
        resolved = [d.resolve() for d in self.data_dirs]
        if len(set(resolved)) < len(resolved):
            raise ConfigError("option data_dirs: a directory is listed twice")
        parse_address(self.listen)
        parse_addresses(self.metaserver)
        if self.advertise:
            parse_address(self.advertise)
        if self.heartbeat_interval_s <= 0:
            raise ConfigError("option heartbeat_interval_s: must be positive")
        if self.body_timeout_s <= 0:
            raise ConfigError("option body_timeout_s: must be positive")
        if self.scrub_mb_per_s < 0:
            raise ConfigError("option scrub_mb_per_s: must not be negative")
        if self.scrub_interval_s <= 0:
            raise ConfigError("option scrub_interval_s: must be positive")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")
        if self.tls_dir.parts:
            try:
                tls.tls_files(self.tls_dir, "chunkserver")
            except ValueError as exc:
                raise ConfigError(f"option tls_dir: {exc}") from None
        if self.status_access not in STATUS_ACCESS:
            raise ConfigError(f"option status_access: one of {', '.join(STATUS_ACCESS)}")


@daemon_command(ChunkserverConfig, "Run a chunkfs chunk server.")
def run(config: ChunkserverConfig) -> None:
    setup_logging(config.log_level)
    secret = auth.load_secret(config.secret_file)
    host, port = parse_address(config.listen)
    try:
        store = ChunkStore(config.data_dirs)
    except (FsError, OSError) as exc:  # a configuration error: exit 2, so systemd does not restart
        click.echo(f"chunkfs-chunkserver: option data_dirs: {exc}", err=True)
        sys.exit(2)
    counters = metrics.ChunkserverMetrics(store)
    files = tls.tls_files(config.tls_dir if config.tls_dir.parts else None, "chunkserver")
    http = SignedHttp(secret, timeout_s=10, retry_s=2, tls=files.client_context() if files else None)
    meta = MetaClient(http, config.metaserver)
    advertised = config.advertise or f"{host}:{port}"
    keys = ChunkKeys(secret)
    fence = Fence()
    heartbeat = Heartbeat(store, meta, advertised, config.heartbeat_interval_s, counters, keys.learn, fence=fence)
    corruption = CorruptionReporter(store, meta)
    scrubber = Scrubber(store, corruption, config.scrub_mb_per_s, config.scrub_interval_s)

    async def background(app):
        tasks = [asyncio.create_task(job.run()) for job in (heartbeat, corruption, scrubber)]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()

    log.info("chunkserver %s serving on %s:%d, data in %s", store.server_id, host, port,
             ", ".join(map(str, config.data_dirs)))
    app = build_app(store, keys, background, ChunkClient(http), corruption, counters,
                    frozenset({advertised, config.listen}), config.body_timeout_s, status_access(config.status_access),
                    fence)
    service.attach(app, status=f"serving on {host}:{port}")
    serve(app, host, port, files.server_context() if files else None)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
