"""The metaservers' election (chunkfs/metaserver/election.py) against a real etcd member: one
primary at a time, the fence of a lapsed lease, and the sync record deciding who may take over.
The failover of whole clusters is tests/test_netns_failover.py."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess

import httpx
import pytest

from chunkfs.etcd_members import EtcdMember, member_command
from chunkfs.metaserver.election import Election, SyncState
from chunkfs.protocol.etcd_client import EtcdClient
from conftest import wait_until

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None and shutil.which("etcd", path="/usr/bin") is None,
                                reason="etcd is not installed (apt-get install etcd-server)")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def etcd(tmp_path):
    port = random.randrange(30000, 40000, 2)
    member = EtcdMember("chunkfs-test", "127.0.0.1", port, port + 1)
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen(member_command(member, [member], tmp_path / "etcd", "test"), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(member.client_url), 30, "etcd answering")
        yield member.client_url
    finally:
        proc.terminate()
        proc.wait(10)


def election(url: str, name: str, ttl_s: int = 2) -> Election:
    return Election(EtcdClient([url]), "/test", name, name, ttl_s, margin_s=0.5)


def test_one_primary_at_a_time(etcd):
    async def run() -> None:
        a, b = election(etcd, "a"), election(etcd, "b")
        assert await a.campaign("")
        assert a.holds()
        assert not await b.campaign("")
        leader = await b.leader()
        assert leader is not None and leader[0].name == "a" and leader[1] == a.epoch
        await a.resign()
        assert not a.holds()
        assert await b.leader() is None
        assert await b.campaign("")
        assert b.epoch > a.epoch or a.epoch == 0
    asyncio.run(run())


def test_a_primary_that_cannot_renew_stops_before_another_takes_over(etcd):
    async def run() -> None:
        a, b = election(etcd, "a"), election(etcd, "b")
        assert await a.campaign("")  # and never renewed: a hung primary
        for _ in range(100):  # the lease is 2 s: taken within 10 s
            if await b.campaign(""):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("b never took the key")
        assert not a.holds()  # a had stopped acknowledging before
    asyncio.run(run())


def test_renewing_keeps_the_key_and_giving_up_frees_it(etcd):
    async def run() -> None:
        a, b = election(etcd, "a"), election(etcd, "b")
        assert await a.campaign("")
        giving_up = asyncio.create_task(asyncio.sleep(5))  # 2.5 TTLs of renewals
        await a.keep(giving_up)
        assert not a.holds()  # gave the key up at the end...
        assert await b.campaign("")  # ...at once
    asyncio.run(run())


def test_the_sync_record_names_who_may_take_over(etcd):
    async def run() -> None:
        a = election(etcd, "a")
        assert await a.campaign("h1")
        assert await a.publish_sync(SyncState("h1", "a", ["b"]))
        await a.resign()
        assert not await election(etcd, "c").campaign("h1")  # not in sync
        assert not await election(etcd, "b").campaign("h0")  # another history
        assert not await election(etcd, "b").campaign("")  # no database
        assert await election(etcd, "b").campaign("h1")
    asyncio.run(run())


def test_only_the_holder_writes_the_sync_record(etcd):
    async def run() -> None:
        a, b = election(etcd, "a"), election(etcd, "b")
        assert await a.campaign("")
        b.epoch, b.valid_until = a.epoch + 1, a.valid_until  # b believes it holds a key it does not
        assert not await b.publish_sync(SyncState("h", "b"))
        assert not b.holds()  # and is fenced by finding out
        assert (await a.sync_state())[0] is None
    asyncio.run(run())
