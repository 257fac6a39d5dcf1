"""`chunkfs-gateway`: load the configuration, connect the client core, serve S3 and REST.

Both servers are hypercorn's trio worker (`hypercorn.trio.serve`) in the nursery that owns the
client core: a request handler awaits the core directly, on the same trio loop, with no thread
or loop hand-off on the way (see `chunkfs/gateway/__init__.py` for the choice and its numbers).
SIGTERM/SIGINT stop accepting, let hypercorn finish its graceful shutdown, then close the core
(what is still open is committed or, for an unfinished upload, dropped).
"""

from __future__ import annotations

import functools
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

import chunkfs.client
from chunkfs.client.upload_sessions import collect_abandoned_forever, count_sessions
from chunkfs import DEFAULT_METASERVER_PORT, auth, service, tls
from chunkfs.config import ConfigError, daemon_command, opt, parse_address, parse_addresses, setup_logging
from chunkfs.gateway.access import Access
from chunkfs.gateway.keys import KeyStore
from chunkfs.gateway.metrics import SESSIONS_COUNT_S, GatewayMetrics
from chunkfs.gateway.rest_app import RestApi
from chunkfs.gateway.s3_app import S3App
from chunkfs.malloc_tuning import give_back_big_buffers

log = logging.getLogger("chunkfs.gateway")

S3_PORT_OFFSET, REST_PORT_OFFSET = 60, 61  # from the metaserver's port: 9580 and 9581 by default
DEFAULT_KEYS_FILE = Path("/var/lib/chunkfs/gateway/keys.json")


@dataclass
class GatewayConfig:
    s3_listen: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT + S3_PORT_OFFSET}", "HOST:PORT of the S3 API")
    rest_listen: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT + REST_PORT_OFFSET}",
                           "HOST:PORT of the REST API (/api/v1/) and /metrics")
    metaserver: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}", "HOST:PORT of the metaserver (with failover: of each, comma-separated)")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"),
                            "file holding the cluster secret (also the key access-key secrets are derived with)")
    keys_file: Path = opt(DEFAULT_KEYS_FILE, "the access keys (`chunkfs gateway key add`); re-read when it changes")
    domain: str = opt("", "virtual-host style addressing: a request to BUCKET.DOMAIN addresses BUCKET")
    tls_cert_file: Path = opt(Path(""), "PEM certificate (chain): serve both APIs over HTTPS [default: with tls_dir, "
                                        "its gateway certificate; else plain HTTP]")
    tls_key_file: Path = opt(Path(""), "PEM private key of tls_cert_file")
    tls_dir: str = opt("", "directory made by chunkfs certs init: reach the cluster with TLS, showing its gateway "
                           "certificate, and serve both APIs over HTTPS with it (unless tls_cert_file is given)")
    upload_expiry_s: float = opt(86400.0, "multipart and tus uploads untouched this long are removed")
    cache_mem_mb: int = opt(128, "MiB of chunks the gateway's client core caches in memory (its GETs stream: "
                                 "this keeps their prefetched chunks and hot objects)")
    max_dirty_mb: int = opt(256, "MiB of written data buffered before writers wait for uploads")
    dedup: bool = opt(True, "a chunk whose content the cluster already holds (for the gateway's key) is not "
                            "uploaded again; off: no content hash, no call")
    retry_s: float = opt(15.0, "seconds a call to the cluster is retried before it fails")
    log_level: str = opt("info", "debug, info, warning or error")

    def validate(self) -> None:
        for name in ("s3_listen", "rest_listen"):
            parse_address(getattr(self, name))
        parse_addresses(self.metaserver)
        if self.s3_listen == self.rest_listen:
            raise ConfigError("options s3_listen and rest_listen: the two APIs need two ports")
        if self.cache_mem_mb < 0 or self.max_dirty_mb <= 0 or self.retry_s <= 0 or self.upload_expiry_s <= 0:
            raise ConfigError("options cache_mem_mb, max_dirty_mb, retry_s, upload_expiry_s: must be positive")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")
        if bool(self.tls_cert_file.parts) != bool(self.tls_key_file.parts):
            raise ConfigError("options tls_cert_file and tls_key_file: give both, or neither")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path.parts and not path.is_file():
                raise ConfigError(f"option {name}: {path} is not a file")
        try:
            tls.tls_files(self.tls_dir, "gateway")
        except ValueError as exc:
            raise ConfigError(f"option tls_dir: {exc}") from None


def _hypercorn_config(listen: str, gateway: GatewayConfig) -> HypercornConfig:
    host, port = parse_address(listen)
    config = HypercornConfig()
    if gateway.tls_cert_file.parts:
        config.certfile, config.keyfile = str(gateway.tls_cert_file), str(gateway.tls_key_file)
    elif (files := tls.tls_files(gateway.tls_dir, "gateway")) is not None:
        # the cluster runs TLS: so do its S3 and REST doors, with the cluster CA's certificate (no
        # client certificate asked: S3 and REST callers prove who they are by their keys)
        config.certfile, config.keyfile = str(files.cert), str(files.key)
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("chunkfs.gateway.http")
    config.graceful_timeout = 10.0
    config.keep_alive_timeout = 75.0  # above the idle time of common S3 clients' connection pools
    return config


async def serve(config: GatewayConfig) -> None:
    secret = auth.load_secret(config.secret_file)
    async with chunkfs.client.open_filesystem(config.metaserver, config.secret_file, uid=0, gid=0, groups=(),
                                              cache_mem_mb=config.cache_mem_mb, max_dirty_mb=config.max_dirty_mb,
                                              retry_s=config.retry_s, tls_dir=config.tls_dir,
                                              tls_name="gateway", dedup=config.dedup,
                                              report_as=f"gateway S3 {config.s3_listen}, REST {config.rest_listen}"
                                              ) as afs:
        access = Access(afs, KeyStore(config.keys_file), secret)
        metrics = GatewayMetrics()
        stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            for app, listen in ((S3App(access, metrics, config.domain), config.s3_listen),
                                (RestApi(access, metrics, config.upload_expiry_s).app(), config.rest_listen)):
                await nursery.start(functools.partial(hypercorn_serve, app, _hypercorn_config(listen, config),  # type: ignore[arg-type]
                                                      shutdown_trigger=stopped.wait))
            log.info("gateway serving S3 on %s and REST on %s for the metaserver %s", config.s3_listen,
                     config.rest_listen, config.metaserver)
            service.notify_ready(f"S3 on {config.s3_listen}, REST on {config.rest_listen}")
            nursery.start_soon(service.watchdog, trio.sleep)
            nursery.start_soon(collect_abandoned_forever, afs, config.upload_expiry_s)
            nursery.start_soon(_count_sessions_forever, afs, metrics)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            service.notify_stopping()
            stopped.set()
            nursery.cancel_scope.deadline = trio.current_time() + 15


async def _count_sessions_forever(root: chunkfs.client.AsyncFilesystem, metrics: GatewayMetrics) -> None:
    """Keep the open-upload-sessions gauge current (until cancelled)."""
    while True:
        try:
            metrics.upload_sessions.set(await count_sessions(root))
        except OSError as exc:
            log.debug("counting upload sessions: %s", exc)
        await trio.sleep(SESSIONS_COUNT_S)


@daemon_command(GatewayConfig, "Run the chunkfs gateway: the namespace over S3 and a REST API.")
def run(config: GatewayConfig) -> None:
    setup_logging(config.log_level)
    give_back_big_buffers()
    trio.run(serve, config)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
