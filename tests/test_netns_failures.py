"""Faults on a cluster spread over network namespaces (tests/netns_cluster.py): one metaserver,
five chunkservers (goal 3) and two clients, each its own host. In every test a writer on one
client and a reader on the other keep going through the fault; afterwards every file whose
close() returned reads back, from both clients, with the checksum the writer had.

The short versions run in the default suite on one shared cluster (each test puts it back as it
found it); `--long` runs the same faults for a minute or more. Every test runs on a plain cluster
and on one with TLS and mutual authentication on every link (conftest's `transport`); the TLS
runs are long, but for a chunkserver killed mid-write, a link cut mid-write and a full disk.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.errors import FsError
from chunkfs.metaserver.registry import WRITABLE_MIN_FREE_BYTES
from chunkfs.protocol import records as r
from chunkfs.protocol.meta_client import MetaClient
from conftest import fsync_directory, wait_until
from netns_cluster import NetnsCluster
from netns_workload import MiB, drop_page_cache, during_fault, sha256, workload_in

HEARTBEAT_TIMEOUT_S = 3.0
DISK_MB = 512  # each chunkserver's disk is a tmpfs this big, so one can be filled in a moment
SCRUB_MB_PER_S = 20  # a pass over a server's chunks takes seconds

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None,
    reason="network namespaces need root, ip and nsenter")


def fault_seconds(short: float, long: float):
    """How long a fault lasts: `short` in the default suite, `long` with --long."""
    return pytest.mark.parametrize("fault_s", [short, pytest.param(long, marks=pytest.mark.long)],
                                   ids=["short", "long"])


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory, transport):
    with NetnsCluster(tmp_path_factory.mktemp(f"netns-{transport}"), chunkservers=5, clients=2, goal=3,
                      heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, scrub_mb_per_s=SCRUB_MB_PER_S,
                      disk_mb={f"cs{i}": DISK_MB for i in range(1, 6)}, tls=transport == "tls") as cluster:
        yield cluster


def restore(cluster: NetnsCluster) -> None:
    """Every daemon running, every link up and clean, every disk free of ballast."""
    for name in cluster.chunkservers + cluster.clients + ["meta"]:
        cluster.link_up(name)
        if name in cluster.impaired:
            cluster.clear_impairment(name)
    for name in cluster.chunkservers:
        cluster.unfill_disk(name)
    cluster.start("meta")
    for name in cluster.chunkservers:
        cluster.start(name)
    cluster.wait_alive(len(cluster.chunkservers))


@pytest.fixture
def netns(shared_cluster):
    """The shared cluster, whole, with every chunk at goal; put back so after the test."""
    restore(shared_cluster)
    wait_until(lambda: shared_cluster.status().chunks_under_goal == 0, 60, "every chunk at goal")
    yield shared_cluster
    restore(shared_cluster)


@pytest.fixture
def workload(netns, request):
    with workload_in(netns, request.node.name) as load:
        yield load


def at_goal(cluster: NetnsCluster, timeout_s: float = 90) -> float:
    return wait_until(lambda: cluster.status().chunks_under_goal == 0, timeout_s, "every chunk back at goal")


def replicas_of(cluster: NetnsCluster, path: Path) -> list[list[str]]:
    return [chunk.replicas for chunk in cluster.layout(path).chunks]


# ---- chunkservers dying ------------------------------------------------------------------------

@pytest.mark.tls_in_default_run
@fault_seconds(5, 60)
def test_one_chunkserver_killed(netns, workload, fault_s):
    with during_fault(workload, lambda: netns.kill("cs2"), lambda: netns.start("cs2"), before_s=1, after_s=1):
        workload.keeps_working(fault_s)
        at_goal(netns)  # copies made elsewhere while it is away


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
@fault_seconds(5, 60)
def test_two_chunkservers_killed(netns, workload, fault_s):
    with during_fault(workload, lambda: [netns.kill(name) for name in ("cs1", "cs4")],
                      lambda: [netns.start(name) for name in ("cs1", "cs4")], before_s=1, after_s=1):
        workload.keeps_working(fault_s)
        at_goal(netns)  # three servers left: goal 3 can still be met


# ---- the network ----------------------------------------------------------------------------

@pytest.mark.tls_in_default_run
@fault_seconds(6, 60)
def test_link_cut_mid_write(netns, workload, fault_s):
    with during_fault(workload, lambda: netns.link_down("cs3"), lambda: netns.link_up("cs3"), before_s=1):
        workload.keeps_working(fault_s)
    at_goal(netns)


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
@fault_seconds(6, 60)
def test_slow_lossy_link(netns, workload, fault_s):
    impair = lambda: print(f"cs5's link: {netns.impair('cs5', delay_ms=40, loss_pct=5)}")
    with during_fault(workload, impair, lambda: netns.clear_impairment("cs5"), before_s=1, after_s=1):
        workload.keeps_working(fault_s)
    at_goal(netns)


@fault_seconds(6, 25)
def test_client_link_cut_and_back(netns, workload, fault_s):
    """The reader's client loses its network for less than its retry_s (30 s): its reads wait and
    go on once it is back (longer, they would fail with EIO, as the README says)."""
    with during_fault(workload, lambda: netns.link_down("client2"), lambda: netns.link_up("client2"), before_s=1):
        time.sleep(fault_s)  # the fault's duration (a parameter of the test), not a wait


# ---- disks --------------------------------------------------------------------------------------

@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_disk_replaced_by_an_empty_one(netns, workload):
    workload.keeps_working(2)
    held = len(netns.chunk_files("cs4"))
    netns.stop("cs4")
    netns.wipe_disk("cs4")
    netns.start("cs4")
    workload.keeps_working(2)
    wait_until(lambda: len(netns.chunk_files("cs4")) > 0, 30, "cs4 takes chunks again")
    workload.stop()
    took_s = at_goal(netns)
    print(f"cs4 had {held} chunks; back at goal {took_s:.1f} s after it returned empty")
    workload.verify()


def test_flipped_byte_is_found_and_repaired(netns, workload):
    """Found by the read (client2 tries that replica first unless it failed it lately) or else by
    the scrubber; either way the reader gets good bytes and the copy is rebuilt."""
    workload.keeps_working(1)
    path = netns.mnt("client1") / "precious"
    data = os.urandom(CHUNK_SIZE + 1000)
    path.write_bytes(data)
    first = netns.layout(path).chunks[0]
    by_id = {netns.server_id(name): name for name in netns.chunkservers}
    victim_server = by_id[first.replicas[0]]  # the replica a reader tries first
    victim = next(p for p in netns.chunk_files(victim_server)
                  if p.name == f"{first.chunk_id:016x}_{first.version:016x}.chunk")
    raw = bytearray(victim.read_bytes())
    raw[4096 + 12345] ^= 0x01
    victim.write_bytes(bytes(raw))
    corrupt_before = netns.status().corrupt_found
    # client2 never read this file: its read goes to the servers and never returns the bad bytes
    assert sha256((netns.mnt("client2") / "precious").read_bytes()) == sha256(data)
    wait_until(lambda: netns.status().corrupt_found > corrupt_before, 30, "the bad copy reported")
    wait_until(lambda: victim.exists() is False or victim.read_bytes() != bytes(raw), 30,
               "the bad copy removed or rewritten")
    at_goal(netns)
    for replicas in replicas_of(netns, path):
        assert len(replicas) == 3
    workload.stop()
    workload.verify()
    path.unlink()


def refused_as_full(log: Path, since: int) -> set[tuple[int, int]]:
    """Chunk versions whose upload a full chunkserver refused (ENOSPC) in the mount's log after
    byte `since`; the mount logs each as it tries a spare instead. (By version: a later version
    of the same chunk may go to that server once deletions made room on it again.)"""
    text = log.read_bytes()[since:].decode(errors="replace")
    return {(int(c), int(v)) for c, v in re.findall(r"chunk (\d+) v(\d+): \S+ failed \(chunkserver disk is full", text)}


def reported_full(netns: NetnsCluster) -> set[str]:
    """Ids of the chunkservers the metaserver counts full (it places no new chunk on them)."""
    return {s.id for s in netns.status().servers if s.capacity_bytes - s.used_bytes < WRITABLE_MIN_FREE_BYTES}


def placement_probe(netns: NetnsCluster) -> r.Reservation:
    """A reservation made now, by a client of the test's own: the servers the metaserver would
    place a new chunk on."""
    return netns.meta_call(lambda meta: MetaClient(meta.http, netns.metaserver, client_id="placement-probe")
                           .reserve(1))


@pytest.mark.tls_in_default_run
def test_full_chunkserver_is_skipped_and_writers_move_elsewhere(netns, workload):
    workload.keeps_working(1)
    full_id = netns.server_id("cs5")
    log = netns.logs / "client1.log"
    since = log.stat().st_size
    repaired = netns.status().chunks_replicated
    netns.fill_disk("cs5", leave_bytes=1 * MiB)
    # the writer's next chunks placed on cs5 are refused there, and each goes to a spare
    wait_until(lambda: refused_as_full(log, since), 30, "a chunk of client1's writer refused by the full cs5")
    workload.keeps_working(3)
    workload.stop()  # it deletes its old files, which would make room on cs5 again
    kept = {(chunk.chunk_id, chunk.version): chunk.replicas for path in workload.writer_dir.iterdir()
            for chunk in netns.layout(path).chunks}
    moved = refused_as_full(log, since) & kept.keys()
    assert moved, "the refused chunk versions belong to files the writer kept"
    for version in moved:
        assert len(kept[version]) == 3 and full_id not in kept[version], (version, kept[version])
    assert netns.status().chunks_replicated == repaired, "stored at goal by the writer, not by re-replication"

    # the writer's old files are deleted, some of their chunks from cs5: once its unlinks have
    # reached the metaserver and no deletion is queued, nothing makes room on cs5 again, and
    # one more fill keeps it full
    fsync_directory(workload.writer_dir)
    wait_until(lambda: netns.status().pending_deletions == 0, 30, "the writer's deletions done")
    netns.fill_disk("cs5", leave_bytes=1 * MiB)
    wait_until(lambda: full_id in reported_full(netns), 4 * HEARTBEAT_TIMEOUT_S, "cs5 reports its disk full")
    # skipped: a reservation made now lists no full server (a mount's older one may still list
    # cs5 for RESERVATION_VALID_S; its uploads there are refused and go to a spare, as above)
    assert full_id not in {s.id for s in placement_probe(netns).servers}
    marker = netns.mnt("client1") / "after-full"
    marker.write_bytes(os.urandom(6 * CHUNK_SIZE))
    assert all(full_id not in replicas for replicas in replicas_of(netns, marker)), "placed on a full server"
    netns.unfill_disk("cs5")
    workload.verify()
    marker.unlink()


def test_every_chunkserver_full_gives_enospc(netns):
    fsync_directory(netns.mnt("client1"))  # unlinks it answered itself reach the metaserver
    wait_until(lambda: netns.status().pending_deletions == 0, 30, "no deletion queued (it would make room)")
    for name in netns.chunkservers:
        netns.fill_disk(name, leave_bytes=1 * MiB)
    try:
        wait_until(lambda: reported_full(netns) == {netns.server_id(n) for n in netns.chunkservers},
                   4 * HEARTBEAT_TIMEOUT_S, "every chunkserver reports its disk full")
        with pytest.raises(FsError) as refused:
            placement_probe(netns)
        assert refused.value.errno == errno.ENOSPC  # the metaserver has nowhere to place a chunk
        # the mount's write: ENOSPC from the metaserver, or from every chunkserver its older
        # reservation lists (upload's "every chunkserver tried is full"); the same errno either way
        with pytest.raises(OSError) as info, open(netns.mnt("client1") / "no-room", "wb") as f:
            f.write(os.urandom(CHUNK_SIZE))
            os.fsync(f.fileno())
        assert info.value.errno == errno.ENOSPC
    finally:
        for name in netns.chunkservers:
            netns.unfill_disk(name)
        # the next test starts only once heartbeats have told the metaserver there is room again
        wait_until(lambda: all(s.capacity_bytes - s.used_bytes >= 16 * MiB for s in netns.status().servers),
                   4 * HEARTBEAT_TIMEOUT_S, "every chunkserver reports room again")
    os.unlink(netns.mnt("client1") / "no-room")


# ---- the metaserver -----------------------------------------------------------------------------

@fault_seconds(3, 20)
def test_metaserver_killed_and_restarted_with_files_open(netns, workload, fault_s):
    workload.keeps_working(1)
    kept_open = netns.mnt("client1") / "kept-open"
    first, second = os.urandom(CHUNK_SIZE + 77), os.urandom(CHUNK_SIZE // 2)
    reading = netns.mnt("client2") / "read-open"
    (netns.mnt("client1") / "read-open").write_bytes(first)
    with open(kept_open, "wb") as writer, open(reading, "rb") as reader:
        writer.write(first)
        writer.flush()
        head = reader.read(1000)
        netns.kill("meta")
        time.sleep(fault_s)  # the fault's duration (a parameter of the test), not a wait
        started = time.monotonic()
        netns.start("meta")
        print(f"metaserver answering {time.monotonic() - started:.1f} s after its start")
        writer.write(second)
        os.fsync(writer.fileno())
        assert head + reader.read() == first
    workload.keeps_working(2)
    workload.stop()
    workload.verify()
    drop_page_cache()
    assert sha256((netns.mnt("client2") / "kept-open").read_bytes()) == sha256(first + second)


# ---- deletion ------------------------------------------------------------------------------

def test_delete_while_a_chunkserver_is_away(netns, workload):
    path = netns.mnt("client1") / "doomed"
    path.write_bytes(os.urandom(3 * CHUNK_SIZE))
    versions = {f"{c.chunk_id:016x}_{c.version:016x}.chunk" for c in netns.layout(path).chunks}
    holders = [name for name in netns.chunkservers
               if versions & {p.name for p in netns.chunk_files(name)}]
    away = holders[0]
    netns.kill(away)
    path.unlink()
    workload.keeps_working(2)
    still_there = lambda: versions & {p.name for p in netns.chunk_files(away)}
    assert still_there()  # nobody could tell it yet
    netns.start(away)
    wait_until(lambda: not still_there(), 40, f"the deleted file's chunks gone from {away}")
    for name in netns.chunkservers:
        assert not versions & {p.name for p in netns.chunk_files(name)}, name
    workload.stop()
    workload.verify()
