"""`chunkfs-metaserver --etcd URL,...`: one metaserver of a group that elects its primary
through etcd (election.py); the others follow it as synchronous standbys (standby.py) and one
of them takes over, without a person, when the primary's lease lapses.

Each metaserver runs this loop, serving one role at a time on its listen address:
- a primary holds the leader key: it serves the API and the replication feed, acknowledges a
  change only while `Election.holds()`, keeps the `sync` record naming the standbys in sync, and
  when the key is lost (or on SIGTERM, when it gives the key up at once) it stops serving and goes
  round the loop again: it comes back as a standby of the new primary, whose new history makes
  it take a fresh copy (a primary's history is never merged into another's);
- a standby follows the primary the leader key names and answers API calls with 503 naming it;
  once the key is gone it tries to take it (if `sync` names it) and becomes the primary;
- with no primary to follow and no right to the key (its database is not known to hold every
  acknowledged change), it waits, answering 503, for one that has.

Every wait is bounded by `POLL_S` and etcd's time-outs; etcd being unreachable makes a standby
wait and a primary fence itself once its lease has run out. A metaserver that cannot reach a
majority of the etcd members and follows no primary answers API calls with 503 saying so (what a
client that gives up before etcd is back reads in its error), not with a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import uvloop
from aiohttp import web

from chunkfs import service, tls
from chunkfs.errors import FsError, NotPrimary
from chunkfs.config import parse_address
from chunkfs.httpserver import json_response, make_app, start_serving
from chunkfs.metaserver import standby as standby_role
from chunkfs.metaserver.app import STATE
from chunkfs.metaserver.db import MetaDB, read_u64
from chunkfs.metaserver.election import Election, SyncPublisher
from chunkfs.metaserver.replication_log import HISTORY_KEY, SEQ_KEY
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import STEP_DOWN_PATH
from chunkfs.protocol.etcd_client import EtcdClient, EtcdUnavailable, parse_endpoints

if TYPE_CHECKING:
    from chunkfs.metaserver.main import MetaserverConfig

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a standby looks at the leader key
HEALTH_EVERY_S = 5.0  # how often the primary asks the etcd members how they are
STEP_DOWN_PAUSE_S = 3 * POLL_S  # after giving the key up, the standbys' turn to take it
LOOP_GIL_WAIT_S = 0.0005  # as main.py's
ETCD_DOWN = "etcd does not answer: no metaserver may act as the primary until a majority of its members answer"


def database_position(data_dir: Path, map_size_bytes: int) -> tuple[str, int]:
    """(replication history, last batch) of the database in `data_dir` (("", 0): none yet)."""
    if not (data_dir / "data.mdb").exists():
        return "", 0
    db = MetaDB(data_dir, map_size_bytes)
    try:
        with db.read() as txn:
            history = txn.get(HISTORY_KEY, db=db.counters)
            seq = txn.get(SEQ_KEY, db=db.counters)
        return (history.decode() if history else ""), (read_u64(seq) if seq else 0)
    finally:
        db.close()


class Roles:
    """The loop described in the module's doc, for one metaserver."""

    def __init__(self, config: MetaserverConfig, secret: bytes,
                 build_primary: Callable[[bool, int], web.Application]) -> None:
        self.config, self.secret, self.build_primary = config, secret, build_primary
        self.host, self.port = parse_address(config.listen)
        self.name = config.advertised
        files = tls.tls_files(config.tls_dir if config.tls_dir.parts else None, "metaserver")
        # with TLS every role serves it, and a standby reaches its primary (and etcd) with it
        self.server_tls = files.server_context() if files else None
        self.client_tls = files.client_context() if files else None
        self.etcd = EtcdClient(parse_endpoints(config.etcd, "https" if files else "http"), tls=self.client_tls)
        self.election = Election(self.etcd, config.etcd_prefix, self.name, self.name, config.etcd_ttl_s)
        self.stopping = asyncio.Event()  # SIGTERM: the primary gives its key up at once
        self.step_down = asyncio.Event()  # a switchover: the same, and then it follows the new primary
        self.role = "starting"

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    await self._one_role()
                except EtcdUnavailable as exc:
                    log.warning("etcd: %s; trying again", exc)
                    await self._serve_waiting(ETCD_DOWN, self._etcd_answers)
        finally:
            await self.etcd.aclose()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), POLL_S)

    async def _one_role(self) -> None:
        leader = await self.election.leader()
        if leader is not None and leader[0].name != self.name:
            await self._serve_standby(leader[0].address, leader[1])
            return
        if leader is not None:  # our own key from before a restart: its lease still runs
            await self._serve_waiting("waiting for the leader key of an earlier run to lapse", self._no_leader,
                                      self._lease_polls)
            return
        history, seq = await asyncio.to_thread(database_position, self.config.data_dir, self.config.map_size_bytes)
        if await self.election.campaign(history):
            await self._serve_primary(promoted=bool(history))
            return
        sync, _ = await self.election.sync_state()
        if not self.election.eligible(sync, self.name, history):
            await self._serve_waiting(f"not eligible (history {history or '(none)'} at batch {seq}): "
                                      "waiting for a primary to follow", self._no_leader, self._lease_polls)

    # ---- the roles ----------------------------------------------------------------------------
    async def _serve_primary(self, promoted: bool) -> None:
        self.role = "primary"
        try:
            app = self.build_primary(promoted, self.election.epoch)  # the database's start-up checks, before serving
        except (lmdb.Error, OSError) as exc:
            log.error("cannot open the database as the primary: %s", exc)
            await self.election.resign()
            await self._pause()
            return
        state = app[STATE]
        replication = state.replication
        assert replication is not None
        state.committer.may_acknowledge = self.election.holds
        health = EtcdHealth(self.etcd, self.election)
        state.failover = health.status
        app.middlewares.append(_fence(self.election.holds))
        app.router.add_post(STEP_DOWN_PATH, self._step_down)
        publisher = SyncPublisher(self.election, replication.history, replication.in_sync,
                                  asyncio.get_running_loop())
        if not await publisher.publish():  # the new history, before anything is acknowledged in it
            state.committer.stop()
            state.db.close()
            return
        replication.sync_record = publisher
        self.step_down.clear()
        runner = await start_serving(app, self.host, self.port, self.server_tls)
        log.warning("serving as the primary (epoch %d, history %s)", self.election.epoch, replication.history)
        try:
            giving_up = asyncio.create_task(_first_of(self.stopping, self.step_down))
            checking = asyncio.create_task(health.run())
            await self.election.keep(giving_up)
            for task in (giving_up, checking):
                task.cancel()
            await asyncio.gather(giving_up, checking, return_exceptions=True)
        finally:
            self.election.lose("stopped serving")
            await runner.cleanup()
        log.warning("no longer the primary")
        if self.step_down.is_set():
            await asyncio.sleep(STEP_DOWN_PAUSE_S)

    async def _step_down(self, request: web.Request) -> web.Response:
        """`chunkfs metaserver switchover`: give the key up; a standby in sync takes it."""
        if request.query.get("primary") != self.name:
            raise FsError(errno.EINVAL, f"{self.name} is the primary, not {request.query.get('primary')!r}")
        self.step_down.set()
        return json_response({"stepped_down": self.name})

    async def _serve_standby(self, primary: str, epoch: int) -> None:
        self.role = "standby"
        follower = standby_role.Standby(primary, self.config.data_dir, self.secret, self.name, synchronous=True,
                                        map_size_bytes=self.config.map_size_bytes, tls=self.client_tls)
        app = standby_role.build_app(follower, self.secret)
        service.attach(app, status=f"standby of {primary}")
        runner = await start_serving(app, self.host, self.port, self.server_tls)
        try:
            while not self.stopping.is_set():
                await self._pause()
                try:
                    leader = await self.election.leader()
                except EtcdUnavailable as exc:
                    log.warning("etcd: %s; following %s meanwhile", exc, primary)
                    follower.note = ETCD_DOWN
                    continue
                follower.note = ""
                if leader is None or leader[1] != epoch:
                    log.warning("the primary %s (epoch %d) is gone%s", primary, epoch,
                                "" if leader is None else f"; {leader[0].address} is primary now")
                    return
        finally:
            await runner.cleanup()

    @property
    def _lease_polls(self) -> int:
        return int(2 * self.config.etcd_ttl_s / POLL_S)

    async def _no_leader(self) -> bool:
        return await self.election.leader() is None

    async def _etcd_answers(self) -> bool:
        try:
            await self.election.leader()
        except EtcdUnavailable:
            return False
        return True

    async def _serve_waiting(self, why: str, over: Callable[[], Awaitable[bool]], max_polls: int = 0) -> None:
        """Answer 503 saying `why` until `over()` (asked every `POLL_S`), SIGTERM, or `max_polls`
        polls (0: no limit); etcd's errors in `over()` end it (the caller tries again)."""
        self.role = "waiting"
        log.warning("%s", why)
        app = make_app(self.secret)

        async def health(request: web.Request) -> web.Response:
            return json_response({"ok": True, "role": "waiting", "why": why})

        async def refuse(request: web.Request) -> web.Response:
            raise NotPrimary(f"this metaserver has no primary to follow yet ({why})")

        app.router.add_get("/health", health)
        app.router.add_route("*", "/v1/{call:.*}", refuse)
        service.attach(app, status="waiting for a primary")
        runner = await start_serving(app, self.host, self.port, self.server_tls)
        try:
            polls = 0
            while not self.stopping.is_set() and (max_polls == 0 or polls < max_polls):
                await self._pause()
                polls += 1
                if not self.stopping.is_set() and await over():
                    return
        finally:
            await runner.cleanup()


class EtcdHealth:
    """What `chunkfs status` shows of the election, refreshed every `HEALTH_EVERY_S` by the
    primary (the status itself never waits for etcd)."""

    def __init__(self, etcd: EtcdClient, election: Election) -> None:
        self.etcd, self.election = etcd, election
        self.members: list[r.EtcdMemberStatus] = []
        self.in_sync: list[str] = []

    async def run(self) -> None:
        while True:
            self.members = await self.etcd.member_status()
            try:
                sync, _ = await self.election.sync_state()
                self.in_sync = sync.standbys if sync is not None else []
            except EtcdUnavailable:
                pass
            await asyncio.sleep(HEALTH_EVERY_S)

    def status(self) -> r.FailoverStatus:
        left = max(0.0, self.election.valid_until - time.monotonic()) if self.election.holds() else 0.0
        return r.FailoverStatus(self.election.name, self.election.epoch, round(left, 2), self.in_sync,
                                self.members)


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _fence(holds: Callable[[], bool]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A primary without its key answers no API call (reads included: they could be stale)."""

    @web.middleware
    async def fence(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not holds():
            raise NotPrimary("this metaserver lost its leader key")
        return await handler(request)

    return fence


def run(config: MetaserverConfig, secret: bytes, build_primary: Callable[[bool, int], web.Application]) -> None:
    """Serve in whichever role the election gives, until SIGTERM/SIGINT."""
    sys.setswitchinterval(LOOP_GIL_WAIT_S)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    roles = Roles(config, secret, build_primary)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, roles.stopping.set)
    log.info("metaserver %s: electing the primary through etcd %s (prefix %s, lease %d s)", roles.name,
             config.etcd, config.etcd_prefix, config.etcd_ttl_s)
    try:
        loop.run_until_complete(roles.run())
    finally:
        loop.close()
