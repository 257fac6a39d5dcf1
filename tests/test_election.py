"""The metaservers' election (chunkfs/metaserver/election.py) against a real etcd member: one
primary at a time, the fence of a lapsed lease, and the sync record deciding who may take over.
The failover of whole clusters is tests/test_netns_failover.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import ssl
import subprocess

import httpx
import pytest

from chunkfs.etcd_members import EtcdMember, member_command
from chunkfs.metaserver.election import Election, SyncState
from chunkfs.protocol.etcd_client import EtcdClient
from chunkfs.tls import TlsFiles, init_certs
from conftest import wait_until

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None and shutil.which("etcd", path="/usr/bin") is None,
                                reason="etcd is not installed (apt-get install etcd-server)")


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1, verify=context or True).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def etcd_member(tmp_path, tls: TlsFiles | None = None):
    """One etcd member (with `tls`: HTTPS only, client certificates of the cluster CA asked);
    its client URL once it answers."""
    port = random.randrange(30000, 40000, 2)
    member = EtcdMember("chunkfs-test", "127.0.0.1", port, port + 1, tls=tls is not None)
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen(member_command(member, [member], tmp_path / "etcd", "test", tls), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        context = TlsFiles(tls.directory, "admin").client_context() if tls is not None else None
        wait_until(lambda: _answers(member.client_url, context), 30, f"etcd answering (log: {tmp_path / 'etcd.log'})")
        yield member.client_url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def etcd(tmp_path):
    with etcd_member(tmp_path) as url:
        yield url


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


def test_with_tls_the_election_goes_over_https_with_certificates_of_the_cluster_ca(tmp_path):
    """An etcd member started as `chunkfs up --tls --ha` starts them (etcd_members.member_command
    with the `etcd` certificate) answers the metaservers' election over HTTPS with their
    certificate, and nothing else: plain HTTP (Go answers it 400 and nothing more), HTTPS without a
    client certificate, and a certificate of another CA get no answer; a metaserver with TLS
    refuses an http:// endpoint."""
    init_certs(tmp_path / "tls")
    init_certs(tmp_path / "other-ca", names=("metaserver",))
    with etcd_member(tmp_path, TlsFiles(tmp_path / "tls", "etcd")) as url:
        assert url.startswith("https://")

        def client(name: str) -> EtcdClient:
            return EtcdClient([url], tls=TlsFiles(tmp_path / "tls", name).client_context())

        async def run() -> None:
            a = Election(client("metaserver"), "/test", "a", "a", 2, margin_s=0.5)
            assert await a.campaign("")
            leader = await Election(client("metaserver"), "/test", "b", "b", 2, margin_s=0.5).leader()
            assert leader is not None and leader[0].name == "a"
            await a.resign()
        asyncio.run(run())
        plain = url.replace("https://", "http://")
        no_certificate = ssl.create_default_context(cafile=tmp_path / "tls" / "ca.pem")
        foreign = ssl.create_default_context(cafile=tmp_path / "tls" / "ca.pem")
        foreign.load_cert_chain(tmp_path / "other-ca" / "metaserver.pem", tmp_path / "other-ca" / "metaserver.key")
        for what, context, target in (("plain HTTP", None, plain), ("no client certificate", no_certificate, url),
                                      ("a certificate of another CA", foreign, url)):
            try:
                answer = httpx.post(f"{target}/v3/kv/range", json={"key": "Lw=="}, timeout=5, verify=context or True)
            except httpx.HTTPError as exc:
                print(f"{what}: {type(exc).__name__}")
                continue
            print(f"{what}: {answer.status_code} {answer.text[:80]!r}")
            assert answer.status_code == 400 and "kvs" not in answer.text and "header" not in answer.text, what
        with pytest.raises(ValueError):
            EtcdClient([plain], tls=TlsFiles(tmp_path / "tls", "metaserver").client_context())
