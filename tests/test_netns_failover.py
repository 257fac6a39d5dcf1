"""Metaserver failover through etcd, on a cluster in network namespaces (tests/netns_cluster.py
with `ha=True`): three etcd members, two metaservers, three chunkservers and two clients, each its
own host. In every test a writer on one client and a reader on the other keep going through the
fault (test_netns_failures.Workload); afterwards every file whose close() returned reads back,
from both clients, with the checksum the writer had, and no application call failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

import chunkfs.client
from conftest import wait_until
from metadata_history import MetadataHistory
from netns_cluster import NetnsCluster
from test_netns_failures import Workload

TTL_S = 5  # the metaservers' default etcd_ttl_s

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None
    or shutil.which("etcd", path=f"{os.environ.get('PATH', '')}:/usr/bin") is None,
    reason="network namespaces need root, ip and nsenter; failover needs etcd (apt-get install etcd-server)")


@pytest.fixture(scope="module")
def ha_cluster(tmp_path_factory):
    cluster = NetnsCluster(tmp_path_factory.mktemp("ha"), chunkservers=3, clients=2, goal=2,
                           heartbeat_timeout_s=3.0, ha=True)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.cleanup()


def standby_in_sync(cluster: NetnsCluster) -> bool:
    """Both metaservers up, the standby in sync and named in etcd's sync record (it may take over)."""
    status = cluster.status()
    return (status.failover is not None and bool(status.failover.in_sync)
            and any(sb.in_sync for sb in status.standbys))


@pytest.fixture
def ha(ha_cluster):
    """The cluster with both metaservers running and the standby in sync; so again afterwards."""
    for name in ha_cluster.metaservers:
        ha_cluster.start(name)
    wait_until(lambda: standby_in_sync(ha_cluster), 90, "a standby in sync, named in etcd")
    yield ha_cluster
    for name in ha_cluster.metaservers:
        ha_cluster.start(name)


@pytest.fixture
def workload(ha, request):
    name = request.node.name.replace("[", "-").replace("]", "")
    load = Workload(ha.mnt("client1") / name, ha.mnt("client2") / name).start()
    try:
        yield load
    finally:
        load.stop()
        shutil.rmtree(ha.mnt("client1") / name, ignore_errors=True)


@pytest.fixture
def history(ha, request):
    """Metadata operations through the Python API (no cache between them and the metaserver),
    checked against a sequential model (metadata_history.py), and the end state from a new client."""
    root = "/history-" + request.node.name
    with chunkfs.client.connect(ha.metaserver, ha.secret_file, retry_s=30, dir_leases=False) as fs:
        ops = MetadataHistory(fs, root).start()
        try:
            yield ops
        finally:
            ops.stop()
    with chunkfs.client.connect(ha.metaserver, ha.secret_file, retry_s=30) as fresh:
        violations = ops.final_violations(fresh.listdir(root))
    print(f"metadata history: {len(ops.history)} operations, {len(violations)} violations")
    assert not violations, "\n".join(violations)


def new_primary(cluster: NetnsCluster, old: str, timeout_s: float = 60) -> str:
    wait_until(lambda: cluster.primary() not in (None, old), timeout_s, f"a primary other than {old}")
    primary = cluster.primary()
    assert primary is not None
    return primary


def report(workload: Workload, what: str, fault_at: float, primary_at: float) -> None:
    first = workload.first_write_after(fault_at)
    print(f"\n{what}: new primary after {primary_at - fault_at:.1f} s; first acknowledged write after "
          f"{(first - fault_at) if first else float('nan'):.1f} s; longest writer pause "
          f"{workload.longest_write_gap_s(fault_at - 5):.1f} s; {workload.writes} writes, {workload.reads} reads")


def test_primary_killed(ha, workload, history):
    workload.keeps_working(2)
    old = ha.primary()
    assert old is not None
    killed_at = time.monotonic()
    ha.kill(old, signal.SIGKILL)
    primary = new_primary(ha, old)
    took_over_at = time.monotonic()
    workload.keeps_working(2)
    report(workload, "SIGKILL of the primary", killed_at, took_over_at)
    ha.start(old)  # it comes back as a standby of the new primary, with a new copy
    wait_until(lambda: ha.role(old) == "standby" and standby_in_sync(ha), 90, f"{old} a standby in sync")
    assert ha.primary() == primary
    workload.stop()
    workload.verify()


def test_primary_stopped_past_its_lease_acknowledges_nothing_after(ha, workload):
    workload.keeps_working(2)
    old = ha.primary()
    assert old is not None
    pid = ha.pid(old)
    assert pid is not None
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        primary = new_primary(ha, old)
        took_over_at = time.monotonic()
        workload.keeps_working(2)
    finally:
        os.kill(pid, signal.SIGCONT)
    # woken past its lease, it must not answer as the primary: it fences itself, then follows
    wait_until(lambda: ha.role(old) in ("standby", "waiting", "fenced", "down"), 30, f"{old} not primary")
    assert ha.primary() == primary
    report(workload, "SIGSTOP of the primary", stopped_at, took_over_at)
    wait_until(lambda: ha.role(old) == "standby" and standby_in_sync(ha), 90, f"{old} a standby in sync again")
    workload.stop()
    workload.verify()


def test_switchover_under_load(ha, workload, history):
    workload.keeps_working(2)
    old = ha.primary()
    assert old is not None
    asked_at = time.monotonic()
    assert ha.meta_call(lambda meta: meta.step_down(ha.meta_address(old))) == ha.meta_address(old)
    primary = new_primary(ha, old, timeout_s=30)
    took_over_at = time.monotonic()
    workload.keeps_working(2)
    report(workload, "switchover", asked_at, took_over_at)
    wait_until(lambda: ha.role(old) == "standby" and standby_in_sync(ha), 90, f"{old} a standby in sync")
    assert ha.primary() == primary
    workload.stop()
    workload.verify()


def test_one_etcd_member_killed_changes_nothing(ha, workload):
    primary = ha.primary()
    ha.kill("etcd1")
    try:
        workload.keeps_working(3 * TTL_S)  # several lease renewals without that member
        assert ha.primary() == primary
    finally:
        ha.start("etcd1")
    workload.stop()
    workload.verify()


def test_primary_cut_off_from_etcd_while_clients_reach_it(ha, workload):
    workload.keeps_working(2)
    old = ha.primary()
    assert old is not None
    etcd = [name for name in ha.nodes if name.startswith("etcd")]
    cut_at = time.monotonic()
    ha.cut_between(old, etcd)
    try:
        primary = new_primary(ha, old)
        took_over_at = time.monotonic()
        workload.keeps_working(2)
        assert ha.role(old) != "primary"  # it fenced itself: clients reaching it are sent on
    finally:
        ha.heal_cut(old)
    report(workload, "the primary cut off from etcd", cut_at, took_over_at)
    wait_until(lambda: ha.role(old) == "standby" and standby_in_sync(ha), 90, f"{old} a standby in sync")
    assert ha.primary() == primary
    workload.stop()
    workload.verify()


def test_link_between_the_metaservers_cut(ha, workload):
    workload.keeps_working(2)
    primary = ha.primary()
    assert primary is not None
    standby = next(name for name in ha.metaservers if name != primary)
    ha.cut_between(primary, [standby])
    try:
        # the primary stops waiting for the standby (once, standby_timeout_s) and names it no more in etcd
        wait_until(lambda: not standby_in_sync(ha), 60, "the standby out of sync")
        workload.keeps_working(2)
        assert ha.primary() == primary  # the standby, behind, does not take over
    finally:
        ha.heal_cut(primary)
    wait_until(lambda: standby_in_sync(ha), 90, "the standby caught up and named in etcd again")
    workload.stop()
    workload.verify()


def test_both_metaservers_killed_and_restarted(ha, workload):
    workload.keeps_working(2)
    for name in ha.metaservers:
        ha.kill(name)
    for name in ha.metaservers:
        ha.start(name)  # whichever etcd's sync record names takes the key
    wait_until(lambda: ha.primary() is not None and standby_in_sync(ha), 90, "a primary and a standby in sync")
    workload.keeps_working(2)
    workload.stop()
    workload.verify()
