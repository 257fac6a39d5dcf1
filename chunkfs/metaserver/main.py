"""`chunkfs-metaserver`: load the configuration, open LMDB, serve."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import click
from aiohttp import web

from chunkfs import DEFAULT_METASERVER_PORT, auth, chunk_tokens, service, tls
from chunkfs.config import ConfigError, daemon_command, load, opt, parse_address, setup_logging
from chunkfs.credentials import CredentialStore
from chunkfs.httpserver import (BODY_TIMEOUT_HELP, DEFAULT_BODY_TIMEOUT_S, STATUS_ACCESS, STATUS_ACCESS_HELP, serve,
                                status_access)
from chunkfs.metaserver.app import Metaserver, build_app
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import GroupCommitter, MetaDB
from chunkfs.metaserver.deleter import Deleter
from chunkfs.metaserver.namespace import Namespace
from chunkfs.metaserver.orphans import OrphanCollector
from chunkfs.metaserver.pinned_pages import PinnedPages
from chunkfs.metaserver import backup, failover, standby
from chunkfs.metaserver.quarantine import Quarantine
from chunkfs.metaserver.replication_log import ReplicationLog
from chunkfs.metaserver.registry import Registry
from chunkfs.metaserver.replicator import Replicator
from chunkfs.metaserver.replies import ReplyLog
from chunkfs.metaserver.trash import TrashCollector
from chunkfs.protocol.records import MAX_TRASH_S
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.etcd_client import parse_endpoints
from chunkfs.protocol.http import SignedHttp

log = logging.getLogger("chunkfs.metaserver")

LOOP_GIL_WAIT_S = 0.0005  # see sys.setswitchinterval in main
OPEN_LEASES_TRUST_RECORD = "open-leases-trust-end"  # see open_leases.OpenLeases.resume


@dataclass
class MetaserverConfig:
    listen: str = opt(f"127.0.0.1:{DEFAULT_METASERVER_PORT}", "HOST:PORT to serve the API, /metrics and the status page on")
    data_dir: Path = opt(Path("/var/lib/chunkfs/meta"), "directory of the LMDB metadata database")
    map_size_gib: float = opt(1024.0, "the most the metadata database may grow to, in GiB (LMDB's map size: "
                                      "address space reserved, not memory or disk; ~500 bytes a file). Raise it "
                                      "while serving: edit this file, then systemctl reload (SIGHUP). Past it, "
                                      "changes fail with ENOSPC; an ERROR is logged at 90%")
    pin_db_in_memory: bool = opt(True, "keep the metadata database's pages in memory (mlock), so a getattr "
                                       "never waits for the disk after the kernel reclaimed a cold page; needs "
                                       "the memory lock limit to allow the database's size")
    secret_file: Path = opt(Path("/etc/chunkfs/secret"), "file holding the cluster secret")
    credentials_file: Path = opt(Path(""), "the role credentials (chunkfs credentials add/list/revoke) "
                                           "[default: credentials.json in data_dir]")
    chunk_token_ttl_s: float = opt(chunk_tokens.DEFAULT_TTL_S, "seconds a chunk token is valid (clients renew theirs)")
    status_access: str = opt("loopback", STATUS_ACCESS_HELP)
    tls_dir: Path = opt(Path(""), "directory made by chunkfs certs init: serve and connect with TLS only, "
                                  "peers must show a certificate of its CA (empty: plain HTTP)")
    default_goal: int = opt(3, "replicas kept of each chunk unless a directory sets its own goal")
    trash_time_s: float = opt(86400.0, "removed files stay in the trash this long unless their directory says "
                                       "otherwise (chunkfs trash-time); 0: not kept")
    heartbeat_timeout_s: float = opt(10.0, "a chunkserver silent this long is marked down")
    deletion_interval_s: float = opt(5.0, "seconds between passes removing dropped chunks")
    orphan_grace_s: float = opt(3600.0, "an unreferenced chunk this recently allocated is not garbage yet; also "
                                        "how long a client may take to commit the chunk versions it reserved")
    replication_per_s: float = opt(20.0, "chunk copies started per second at most, to bring chunks back to goal")
    replication_in_flight: int = opt(8, "chunk copies under way at once at most")
    lock_grace_s: float = opt(15.0, "after a start, new file locks wait up to this long for the clients that held "
                                    "locks before to reclaim theirs (less when all of them have)")
    client_timeout_s: float = opt(90.0, "a mount that stopped following the change feed this long is gone: "
                                         "the files it kept open after unlinking them are freed")
    standby_timeout_s: float = opt(5.0, "a synchronous standby that has not confirmed a change this long falls "
                                        "out of sync: changes are acknowledged without it until it catches up")
    restore_quarantine_s: float = opt(7 * 86400.0, "after starting on a restored backup or a promoted standby, "
                                                   "chunk versions the database does not know are kept this long")
    follow: str = opt("", "HOST:PORT of a metaserver to follow as a standby (empty: serve as the metaserver); "
                          "restart without it to promote the standby")
    synchronous: bool = opt(True, "as a standby: the metaserver acknowledges a change only once this standby "
                                  "has it on disk (within standby_timeout_s)")
    etcd: str = opt("", "etcd endpoints (http://HOST:2379,...; https:// with tls_dir, which then is also the "
                        "certificate shown to etcd) for automatic failover: the metaservers "
                        "configured with them elect the primary; the others follow it as standbys "
                        "(empty: no etcd, `follow` says the role)")
    etcd_prefix: str = opt("/chunkfs", "the etcd keys of this cluster start with it (one per cluster)")
    etcd_ttl_s: int = opt(5, "with etcd: the primary's lease; a primary silent this long is replaced, and "
                             "stops acknowledging changes a second before (sets the failover time)")
    advertise: str = opt("", "with etcd: HOST:PORT clients and standbys reach this metaserver at "
                             "(empty: listen)")
    body_timeout_s: float = opt(DEFAULT_BODY_TIMEOUT_S, BODY_TIMEOUT_HELP)
    log_level: str = opt("info", "debug, info, warning or error")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    @property
    def map_size_bytes(self) -> int:
        return int(self.map_size_gib * (1 << 30))

    def validate(self) -> None:
        parse_address(self.listen)
        if self.body_timeout_s <= 0:
            raise ConfigError("option body_timeout_s: must be positive")
        if self.follow:
            parse_address(self.follow)
        if self.etcd and self.follow:
            raise ConfigError("options etcd and follow: with etcd the primary is elected; give one of them")
        if self.advertise:
            parse_address(self.advertise)
        if not 2 <= self.etcd_ttl_s <= 600:
            raise ConfigError(f"option etcd_ttl_s: {self.etcd_ttl_s} is not between 2 and 600")
        if not 0.01 <= self.map_size_gib <= (1 << 20):
            raise ConfigError(f"option map_size_gib: {self.map_size_gib} is not between 0.01 and 1048576")
        if self.standby_timeout_s <= 0 or self.restore_quarantine_s < 0:
            raise ConfigError("options standby_timeout_s and restore_quarantine_s: must be positive")
        if not 1 <= self.default_goal <= 16:
            raise ConfigError(f"option default_goal: {self.default_goal} is not between 1 and 16")
        if self.lock_grace_s < 0:
            raise ConfigError("option lock_grace_s: must not be negative")
        if not 0 <= self.trash_time_s <= MAX_TRASH_S:
            raise ConfigError(f"option trash_time_s: {self.trash_time_s} is not between 0 and {MAX_TRASH_S}")
        if self.client_timeout_s <= 0:
            raise ConfigError("option client_timeout_s: must be positive")
        if self.heartbeat_timeout_s <= 0:
            raise ConfigError("option heartbeat_timeout_s: must be positive")
        if self.replication_per_s <= 0 or self.replication_in_flight < 1:
            raise ConfigError("options replication_per_s and replication_in_flight: must be positive")
        if not self.secret_file.exists():
            raise ConfigError(f"option secret_file: {self.secret_file} does not exist")
        if self.status_access not in STATUS_ACCESS:
            raise ConfigError(f"option status_access: one of {', '.join(STATUS_ACCESS)}")
        if not 10 <= self.chunk_token_ttl_s <= 7 * 86400:
            raise ConfigError("option chunk_token_ttl_s: between 10 s and 7 days")
        if self.tls_dir.parts:
            try:
                tls.tls_files(self.tls_dir, "metaserver")
            except ValueError as exc:
                raise ConfigError(f"option tls_dir: {exc}") from None
            if any(e.startswith("http://") for e in parse_endpoints(self.etcd, "https")):
                raise ConfigError("options etcd and tls_dir: with TLS the metaserver reaches etcd over https:// "
                                  "only (etcd-server with --cert-file, --client-cert-auth: see chunkfs.etcd_members)")
        if not self.credentials_file.parts:
            self.credentials_file = self.data_dir / "credentials.json"


@daemon_command(MetaserverConfig, "Run the chunkfs metadata server.")
def run(config: MetaserverConfig) -> None:
    setup_logging(config.log_level)
    secret = auth.load_secret(config.secret_file)
    if auth.split_credential(secret)[0] is not None:
        raise SystemExit(f"{config.secret_file} holds a credential: the metaserver needs the cluster secret")
    host, port = parse_address(config.listen)
    if config.etcd:
        reload = reloaded_config()
        failover.run(config, secret, lambda promoted, epoch: build_primary(config, secret, reload, promoted, epoch))
        return
    if config.follow:
        standby.run(config.follow, config.data_dir, secret, host, port, config.synchronous,
                    config.map_size_bytes, config.tls_dir if config.tls_dir.parts else None)
        return
    app = build_primary(config, secret, reloaded_config())
    # A thread doing Python work (a /metrics render, an fsck page, the replicator's scan, a
    # registration's pages) keeps the GIL until the switch interval runs out each time the event
    # loop wakes for a request: 5 ms by default, added to that request. 0.5 ms bounds it at the
    # cost of more GIL hand-offs in those threads.
    sys.setswitchinterval(LOOP_GIL_WAIT_S)
    files = tls.tls_files(config.tls_dir if config.tls_dir.parts else None, "metaserver")
    serve(app, host, port, files.server_context() if files else None)


def build_primary(config: MetaserverConfig, secret: bytes, reload: Callable[[], MetaserverConfig],
                  promoted: bool = False, epoch: int = 0) -> web.Application:
    """Open the database and build the serving metaserver's app (its cleanup closes them).
    `promoted`: a standby in sync becomes the primary (see `backup.start_primary`). `epoch`: the
    elected primary's (failover.py; 0 without etcd), which chunkservers check (their fencing.py)."""
    host, port = parse_address(config.listen)
    db = MetaDB(config.data_dir, config.map_size_bytes)
    pinned = PinnedPages(config.data_dir / "data.mdb") if config.pin_db_in_memory else None
    if pinned is not None:
        pinned.start()
    namespace = Namespace(db, config.default_goal, int(config.trash_time_s))
    chunks = ChunkTable(db, namespace, config.orphan_grace_s)
    with db.env.begin(write=True) as txn:
        namespace.init_root(txn)
        chunks.repair_counters(txn)
        chunks.ensure_version_index(txn)  # first: the counts' recount reads the index
        namespace.counts.ensure(txn, chunks.recount_all)
        chunks.ensure_stored_bytes(txn)
        backup.start_primary(txn, db, in_sync=promoted)
    replication = ReplicationLog(db, config.standby_timeout_s)
    committer = GroupCommitter(db, replication)
    registry = Registry(db, config.heartbeat_timeout_s)
    tokens = chunk_tokens.TokenIssuer(chunk_tokens.chunk_key(secret), config.chunk_token_ttl_s)
    files = tls.tls_files(config.tls_dir if config.tls_dir.parts else None, "metaserver")
    http = SignedHttp(chunk_tokens.metaserver_credential(tokens.key), timeout_s=10, retry_s=1,  # to chunkservers
                      tls=files.client_context() if files else None)
    deleter = Deleter(db, committer, chunks, registry, ChunkClient(http, epoch), config.deletion_interval_s)
    replicator = Replicator(db, committer, chunks, registry, ChunkClient(http, epoch), deleter,
                            config.replication_per_s, config.replication_in_flight, tokens)
    state = Metaserver(db, committer, namespace, chunks, registry, deleter, config.orphan_grace_s, replicator,
                       lock_grace_s=config.lock_grace_s)
    state.tokens = tokens
    state.epoch = epoch
    state.credentials = CredentialStore(config.credentials_file, secret)
    state.replication = replication
    state.replies = ReplyLog(db, committer)
    state.quarantine = Quarantine(db, committer, chunks, config.restore_quarantine_s)
    state.trash = TrashCollector(db, committer, namespace.trash, deleter.wake.set)
    state.orphans = OrphanCollector(db, committer, namespace, state.changes, config.client_timeout_s,
                                    deleter.wake.set)
    log.info("metaserver serving on %s:%d, data in %s", host, port, config.data_dir)
    app = build_app(state, secret, http, port, config.body_timeout_s, status_access(config.status_access))
    trust_record = config.data_dir / OPEN_LEASES_TRUST_RECORD
    state.open_leases.resume(trust_record)

    async def save_trust_end(app: web.Application) -> None:
        state.open_leases.save_trust_end(trust_record)

    app.on_cleanup.append(save_trust_end)
    app.on_startup.append(reload_on_sighup(db, reload))
    if pinned is not None:  # a metaserver that stops being the primary (failover.py) lets its pages go
        app.on_cleanup.append(lambda app: asyncio.to_thread(pinned.stop))
    service.attach(app, status=f"serving on {host}:{port}")
    gc.freeze()  # what start-up made lives as long as the process: no collection walks it again
    return app


def reloaded_config() -> Callable[[], MetaserverConfig]:
    """Reads the configuration again as it was given (file, then flags), for SIGHUP."""
    params = dict(click.get_current_context().params)
    config_file = params.pop("config_file", None)
    return lambda: load(MetaserverConfig, config_file, params)


def reload_on_sighup(db: MetaDB, reload: Callable[[], MetaserverConfig]
                     ) -> Callable[[web.Application], Awaitable[None]]:
    """SIGHUP (systemctl reload) applies a new `map_size_gib` without a restart; the other
    options need one."""

    async def grow() -> None:
        try:
            size = reload().map_size_bytes
        except ConfigError as exc:
            log.error("reload: %s; nothing changed", exc)
            return
        if size < db.map_size_bytes():
            log.warning("reload: map_size_gib is below the current map size; it is lowered only by a restart")
        elif not await asyncio.to_thread(db.grow_map, size):
            log.error("reload: no moment without an open transaction came within a minute; map size unchanged")

    async def install(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()

        def on_sighup() -> None:
            task = loop.create_task(grow())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)

    return install


def main() -> None:
    run()


if __name__ == "__main__":
    main()
