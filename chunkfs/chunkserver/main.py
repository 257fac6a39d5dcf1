"""`chunkfs-chunkserver`: load the configuration, open the chunk store, serve."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from chunkfs import DEFAULT_METASERVER_PORT, auth, metrics, service
from chunkfs.chunkserver.app import build_app
from chunkfs.chunkserver.heartbeat import Heartbeat
from chunkfs.chunkserver.scrubber import CorruptionReporter, Scrubber
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, parse_addresses, setup_logging
from chunkfs.errors import FsError
from chunkfs.httpserver import BODY_TIMEOUT_HELP, DEFAULT_BODY_TIMEOUT_S, serve
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
    secret_file: Path = opt(Path("/etc/chunkfs/secret"), "file holding the cluster secret")
    heartbeat_interval_s: float = opt(2.0, "seconds between heartbeats to the metaserver")
    scrub_mb_per_s: float = opt(50.0, "MiB/s at most re-read to verify stored chunks in the background; 0 is off")
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
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")


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
    http = SignedHttp(secret, timeout_s=10, retry_s=2)
    meta = MetaClient(http, config.metaserver)
    advertised = config.advertise or f"{host}:{port}"
    heartbeat = Heartbeat(store, meta, advertised, config.heartbeat_interval_s, counters)
    corruption = CorruptionReporter(store, meta)
    scrubber = Scrubber(store, corruption, config.scrub_mb_per_s)

    async def background(app):
        tasks = [asyncio.create_task(job.run()) for job in (heartbeat, corruption, scrubber)]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()

    log.info("chunkserver %s serving on %s:%d, data in %s", store.server_id, host, port,
             ", ".join(map(str, config.data_dirs)))
    app = build_app(store, secret, background, ChunkClient(http), corruption, counters,
                    frozenset({advertised, config.listen}), config.body_timeout_s)
    service.attach(app, status=f"serving on {host}:{port}")
    serve(app, host, port)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
