"""File locks when a client's network is cut (tests/netns_cluster.py: the metaserver and each
client a host of its own). A cut-off holder keeps nobody waiting for longer than its session
(`client_timeout_s`): its locks go to the waiters then, and the cut-off client is told when it
is back: the file it had locked fails with EIO, so it cannot write on as if it still held the
lock (README, "Locks"). On a plain cluster and (with --long) on one with TLS on every link
(conftest's `transport`)."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import wait_until
from line_process import Locker
from netns_cluster import NetnsCluster

CLIENT_TIMEOUT_S = 5.0

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None,
    reason="network namespaces need root, ip and nsenter")


@pytest.fixture(scope="module")
def netns(tmp_path_factory, transport):
    with NetnsCluster(tmp_path_factory.mktemp(f"netns-locks-{transport}"), chunkservers=1, clients=2, goal=1,
                      metaserver_options={"client-timeout-s": str(CLIENT_TIMEOUT_S)},
                      tls=transport == "tls") as cluster:
        yield cluster


def test_a_cut_off_holder_loses_its_locks_to_the_waiter_and_gets_eio(netns):
    path = netns.mnt("client1") / "cut-off"
    path.write_bytes(b"0" * 100)
    wait_until(lambda: (netns.mnt("client2") / "cut-off").exists(), 10, "the file seen on client2")
    holder, waiter = Locker(path), Locker(netns.mnt("client2") / "cut-off")
    try:
        assert holder.do("posix w 0 0 nowait") == "ok"
        assert holder.do("flock ex nowait") == "ok"
        waiter.send("posix w 0 0 wait")
        wait_until(lambda: netns.status().lock_waits == 1, 20, "the waiter waits at the metaserver")
        netns.link_down("client1")
        try:
            # granted once client1's session is over (CLIENT_TIMEOUT_S without a feed poll)
            assert waiter.answer(timeout_s=CLIENT_TIMEOUT_S + 60) == "ok"
            assert waiter.do("flock ex nowait") == "ok"
            assert waiter.do("write 0 B") == "ok"
        finally:
            netns.link_up("client1")
        # back: client1 checks its locks on its first feed poll and fails the file from then on
        wait_until(lambda: holder.do("write 0 A") == "err EIO", 60, "the cut-off holder's write fails with EIO")
        assert holder.do("write 1 A") == "err EIO"  # not once: every use
        assert holder.do("posix w 0 0 nowait") == "err EAGAIN"  # the waiter holds it now
        assert waiter.do("posix u 0 0 nowait") == "ok"
        holder.end()  # its close fails too: nothing it wrote after its lock was lost is committed
        waiter.end()
        for client in ("client2", "client1"):
            assert (netns.mnt(client) / "cut-off").read_bytes()[:2] == b"B0", client
    finally:
        holder.end()
        waiter.end()
