"""`chunkfs-chunkserver`: load the configuration, open the chunk store, serve."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from chunkfs import DEFAULT_METASERVER_PORT, auth, service
from chunkfs.chunkserver.app import build_app
from chunkfs.chunkserver.heartbeat import Heartbeat
from chunkfs.chunkserver.scrubber import CorruptionReporter, Scrubber
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, setup_logging
from chunkfs.httpserver import serve
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient

log = logging.getLogger("chunkfs.chunkserver")


@dataclass
class ChunkserverConfig:
    listen: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT + 1}", "HOST:PORT to serve chunks on")
    advertise: str = opt("", "HOST:PORT clients and peers use to reach this server [default: listen]")
    data_dir: Path = opt(Path("/var/lib/chunkfs/chunks"), "directory the chunks are stored in")
    metaserver: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}", "HOST:PORT of the metaserver")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"), "file holding the cluster secret")
    heartbeat_interval_s: float = opt(2.0, "seconds between heartbeats to the metaserver")
    scrub_mb_per_s: float = opt(50.0, "MiB/s at most re-read to verify stored chunks in the background; 0 is off")
    log_level: str = opt("info", "debug, info, warning or error")

    def validate(self) -> None:
        parse_address(self.listen)
        parse_address(self.metaserver)
        if self.advertise:
            parse_address(self.advertise)
        if self.heartbeat_interval_s <= 0:
            raise ConfigError("option heartbeat_interval_s: must be positive")
        if self.scrub_mb_per_s < 0:
            raise ConfigError("option scrub_mb_per_s: must not be negative")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")


@daemon_command(ChunkserverConfig, "Run a chunkfs chunk server.")
def run(config: ChunkserverConfig) -> None:
    setup_logging(config.log_level)
    secret = auth.load_secret(config.secret_file)
    host, port = parse_address(config.listen)
    store = ChunkStore(config.data_dir)
    http = SignedHttp(secret, timeout_s=10, retry_s=2)
    meta = MetaClient(http, config.metaserver)
    heartbeat = Heartbeat(store, meta, config.advertise or f"{host}:{port}", config.heartbeat_interval_s)
    corruption = CorruptionReporter(store, meta)
    scrubber = Scrubber(store, corruption, config.scrub_mb_per_s)

    async def background(app):
        tasks = [asyncio.create_task(job.run()) for job in (heartbeat, corruption, scrubber)]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()

    log.info("chunkserver %s serving on %s:%d, data in %s", store.server_id, host, port, config.data_dir)
    app = build_app(store, secret, background, ChunkClient(http), corruption)
    service.attach(app, status=f"serving on {host}:{port}")
    serve(app, host, port)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
