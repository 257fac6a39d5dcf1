"""Metaserver failover through etcd, on a cluster in network namespaces (tests/netns_cluster.py
with `ha=True`): three etcd members, two metaservers, three chunkservers and two clients, each its
own host. In every test a writer on one client and a reader on the other keep going through the
fault (netns_workload.during_fault); afterwards every file whose close() returned reads back,
from both clients, with the checksum the writer had, and no application call failed. Several
clients of the Python API make a history of metadata operations meanwhile, checked for
linearizability (metadata_history.py) where the fault may lose or reorder an acknowledgement.
Each test runs on a plain cluster and (with --long) on one with TLS and mutual authentication on
every link, etcd's included (conftest's `transport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

import chunkfs.client
from chunkfs import CHUNK_SIZE, auth
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.chunk_client import ChunkClient
from chunkfs.protocol.http import SignedHttp
from conftest import wait_until
from metadata_history import MetadataHistory
from netns_cluster import NetnsCluster
from netns_workload import Workload, during_fault, sha256, workload_in
from signed_requests import raw_connection, sign_headers

TTL_S = 5  # the metaservers' default etcd_ttl_s
STOPPED_S = 30  # how long the SIGSTOP test keeps the primary stopped (the issue: 30 s)
HISTORY_CLIENTS = 3

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None
    or shutil.which("etcd", path=f"{os.environ.get('PATH', '')}:/usr/bin") is None,
    reason="network namespaces need root, ip and nsenter; failover needs etcd (apt-get install etcd-server)")


@pytest.fixture(scope="module")
def ha_cluster(tmp_path_factory, transport):
    # deletion passes often, so one falls inside a test's window (test_removal_waits_for_the_standby)
    with NetnsCluster(tmp_path_factory.mktemp(f"ha-{transport}"), chunkservers=3, clients=2, goal=2,
                      heartbeat_timeout_s=3.0, ha=True, metaserver_options={"deletion-interval-s": "0.5"},
                      tls=transport == "tls") as cluster:
        yield cluster


def standby_in_sync(cluster: NetnsCluster) -> bool:
    """Both metaservers up, the standby in sync and named in etcd's sync record (it may take over)."""
    status = cluster.status()
    return (status.failover is not None and bool(status.failover.in_sync)
            and any(sb.in_sync for sb in status.standbys))


@pytest.fixture
def ha(ha_cluster):
    """The cluster with both metaservers running and the standby in sync; so again afterwards."""
    for name in ha_cluster.nodes:
        if name.startswith("etcd"):
            ha_cluster.start(name)
    for name in ha_cluster.metaservers:
        ha_cluster.start(name)
    wait_until(lambda: standby_in_sync(ha_cluster), 90, "a standby in sync, named in etcd")
    yield ha_cluster
    for name in [*(n for n in ha_cluster.nodes if n.startswith("etcd")), *ha_cluster.metaservers]:
        ha_cluster.start(name)


@pytest.fixture
def workload(ha, request):
    with workload_in(ha, request.node.name) as load:
        yield load


@pytest.fixture
def history(ha, request):
    """Metadata operations of several Python API clients (no cache between them and the
    metaserver) in one directory, checked for linearizability (metadata_history.py) with the
    end state as a new client lists it."""
    root = "/history-" + request.node.name
    with contextlib.ExitStack() as clients:
        filesystems = [clients.enter_context(chunkfs.client.connect(ha.metaserver, ha.secret_file, retry_s=30,
                                                                    dir_leases=False, **ha.api_options))
                       for _ in range(HISTORY_CLIENTS)]
        ops = MetadataHistory(filesystems, root).start()
        try:
            yield ops
        finally:
            ops.stop()
    with chunkfs.client.connect(ha.metaserver, ha.secret_file, retry_s=30, **ha.api_options) as fresh:
        violations = ops.check(fresh.listdir(root))
    print(f"metadata history: {len(ops.history)} operations of {HISTORY_CLIENTS} clients, "
          f"{len(violations)} violations")
    assert not violations, "\n".join(violations[:50])


def new_primary(cluster: NetnsCluster, old: str, timeout_s: float = 60) -> str:
    wait_until(lambda: cluster.primary() not in (None, old), timeout_s, f"a primary other than {old}")
    primary = cluster.primary()
    assert primary is not None
    return primary


@dataclass
class Takeover:
    old: str
    new: str = ""
    fault_at: float = 0.0
    took_over_at: float = 0.0


def report(workload: Workload, what: str, fault_at: float, back_at: float, back: str = "new primary") -> None:
    first = workload.first_write_after(fault_at)
    print(f"\n{what}: {back} after {back_at - fault_at:.1f} s; first acknowledged write after "
          f"{(first - fault_at) if first else float('nan'):.1f} s; longest writer pause "
          f"{workload.longest_write_gap_s(fault_at - 5):.1f} s; {workload.writes} writes, {workload.reads} reads")


@contextlib.contextmanager
def primary_replaced(ha: NetnsCluster, workload: Workload, what: str, fault: Callable[[str], None],
                     heal: Callable[[str], None] = lambda name: None, timeout_s: float = 60) -> Iterator[Takeover]:
    """`during_fault` with `fault(primary)`: the other metaserver takes over and the workload goes
    on under it before the with-body runs; after `heal(old primary)` the old one is a standby in
    sync of the new one, which is still the primary."""
    old = ha.primary()
    assert old is not None
    takeover = Takeover(old)

    def recovered() -> None:
        report(workload, what, takeover.fault_at, takeover.took_over_at)
        wait_until(lambda: ha.role(old) == "standby" and standby_in_sync(ha), 90, f"{old} a standby in sync again")
        assert ha.primary() == takeover.new

    with during_fault(workload, lambda: fault(old), lambda: heal(old), recovered) as fault_at:
        takeover.fault_at = fault_at
        takeover.new = new_primary(ha, old, timeout_s)
        takeover.took_over_at = time.monotonic()
        workload.keeps_working(2)
        yield takeover


def test_primary_killed(ha, workload, history):
    # it comes back as a standby of the new primary, with a new copy
    with primary_replaced(ha, workload, "SIGKILL of the primary", ha.kill, ha.start):
        pass


def epoch_of(cluster: NetnsCluster) -> int:
    failover = cluster.status().failover
    assert failover is not None
    return failover.epoch


def fencing_epochs(cluster: NetnsCluster) -> set[int]:
    """The primary's epoch each chunkserver obeys (chunkserver/fencing.py), from its /health."""
    return {httpx.get(f"{cluster.scheme}://{cluster.address(name)}/health", timeout=5,
                      verify=cluster.tls_context() or True).json()["fencing_epoch"]
            for name in cluster.chunkservers}


class UnansweredMkdir(threading.Thread):
    """A mkdir of /`name` sent on a connection of its own to `metaserver` (to a stopped process
    it waits in the socket; with TLS, its handshake waits there and the mkdir follows once the
    process runs again); `status()`: the HTTP status it was answered with, None when the
    connection was closed unanswered."""

    def __init__(self, cluster: NetnsCluster, metaserver: str, name: str) -> None:
        super().__init__(daemon=True)
        self.address = cluster.meta_address(metaserver)
        self.tls = cluster.tls_context()
        self.body = r.json_encode(r.CreateReq(parent=1, name=name.encode(), mode=stat.S_IFDIR | 0o755, uid=0, gid=0))
        self.headers = sign_headers(auth.load_secret(cluster.secret_file), self.address, "POST", "/v1/fs/mkdir",
                                    self.body, (("Content-Type", "application/json"),))
        self.first_line = b""
        self.sent = threading.Event()
        self.start()
        self.sent.wait(10)  # sent (or, with TLS, the handshake under way)

    def run(self) -> None:
        request = ["POST /v1/fs/mkdir HTTP/1.1", *(f"{k}: {v}" for k, v in self.headers),
                   f"Content-Length: {len(self.body)}", "Connection: close"]
        try:
            connection = raw_connection(self.address, timeout_s=60)
            if self.tls is not None:
                self.sent.set()
                connection = self.tls.wrap_socket(connection, server_hostname=self.address.rpartition(":")[0])
            with connection:
                connection.sendall(("\r\n".join(request) + "\r\n\r\n").encode() + self.body)
                self.sent.set()
                self.first_line = connection.makefile("rb").readline()
        except OSError:  # ssl.SSLError too: cut off unanswered
            pass
        finally:
            self.sent.set()

    def status(self) -> int | None:
        self.join(90)
        return int(self.first_line.split()[1]) if self.first_line.startswith(b"HTTP/") else None


def refused_as_former_primary(cluster: NetnsCluster, path, epoch: int) -> None:
    """A DELETE of one of `path`'s chunk versions signed as the primary of `epoch` is refused by
    its chunkserver (ESTALE), which keeps the version."""
    chunk = cluster.layout(path).chunks[0]
    holder = next(name for name in cluster.chunkservers if cluster.server_id(name) in chunk.replicas)
    http = SignedHttp(auth.load_secret(cluster.secret_file), retry_s=0, tls=cluster.tls_context())

    async def delete() -> None:
        try:
            await ChunkClient(http, fencing_epoch=epoch).delete(cluster.address(holder), chunk.chunk_id, chunk.version)
        finally:
            await http.aclose()

    with pytest.raises(FsError) as refused:
        asyncio.run(delete())
    assert refused.value.errno == errno.ESTALE
    assert f"{chunk.chunk_id:016x}_{chunk.version:016x}.chunk" in {p.name for p in cluster.chunk_files(holder)}


def test_primary_stopped_past_its_lease_is_fenced(ha, workload, history):
    """SIGSTOP of the primary for longer than its lease, then SIGCONT: the standby took over and
    the woken one acknowledges nothing. A mkdir that reached it while it was stopped is refused
    when it wakes (and is nowhere); the chunkservers obey the new primary's epoch and refuse a
    DELETE signed with the old one."""
    old_epoch = epoch_of(ha)
    kept = ha.mnt("client1") / "kept"
    kept.write_bytes(os.urandom(CHUNK_SIZE + 1000))
    stopped: list[int] = []
    stopped_at: list[float] = []

    def stop(name: str) -> None:
        pid = ha.pid(name)
        assert pid is not None
        stopped.append(pid)
        stopped_at.append(time.monotonic())
        os.kill(pid, signal.SIGSTOP)

    def cont(name: str) -> None:
        # the fault's duration: stopped STOPPED_S in all, well past its lease, however soon the
        # standby took over
        time.sleep(max(0.0, STOPPED_S - (time.monotonic() - stopped_at[0])))
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    with primary_replaced(ha, workload, "SIGSTOP of the primary", stop, cont) as takeover:
        new_epoch = epoch_of(ha)
        assert new_epoch > old_epoch
        wait_until(lambda: fencing_epochs(ha) == {new_epoch}, 30, f"every chunkserver obeying epoch {new_epoch}")
        waiting = UnansweredMkdir(ha, takeover.old, "sent-to-the-stopped-primary")
    assert waiting.status() in (503, None)  # refused, or cut off unanswered: never acknowledged
    assert "sent-to-the-stopped-primary" not in os.listdir(ha.mnt("client2"))
    refused_as_former_primary(ha, kept, old_epoch)
    kept.unlink()


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_switchover_under_load(ha, workload, history):
    def step_down(old: str) -> None:
        assert ha.meta_call(lambda meta: meta.step_down(ha.meta_address(old))) == ha.meta_address(old)

    with primary_replaced(ha, workload, "switchover", step_down, timeout_s=30):
        pass


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_one_etcd_member_killed_changes_nothing(ha, workload):
    primary = ha.primary()
    with during_fault(workload, lambda: ha.kill("etcd1"), lambda: ha.start("etcd1")):
        workload.keeps_working(3 * TTL_S)  # several lease renewals without that member
        assert ha.primary() == primary


def gives_up(cluster: NetnsCluster, retry_s: float = 3) -> OSError | None:
    """The error a Python API client that waits only `retry_s` for a mkdir gets (None: none)."""
    try:
        with chunkfs.client.connect(cluster.metaserver, cluster.secret_file, retry_s=retry_s,
                                    **cluster.api_options) as fs:
            fs.mkdir("/made-without-a-primary")
    except OSError as exc:
        return exc
    return None


class CachedReader:
    """Files a mount wrote, then opened again and read in full, kept open: what that mount holds
    of them (their layouts, inline bytes and chunks) must go on reading while no metaserver
    answers. Each read first drops the kernel's pages of the file, so it reaches the mount. Only
    the open descriptors are used: a path's lookup, or another client's change of the files
    (which would make the kernel ask for their attributes again), could need the metaserver."""

    def __init__(self, directory, sizes: list[int]) -> None:
        self.digests: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.fds: dict[str, int] = {}
        for i, size in enumerate(sizes):
            data = os.urandom(size)
            (directory / f"cached{i}").write_bytes(data)
            self.digests[f"cached{i}"], self.sizes[f"cached{i}"] = sha256(data), size
        for name in self.digests:
            self.fds[name] = os.open(directory / name, os.O_RDONLY)
        self.reads_all()  # now in the mount's caches

    def read(self, name: str) -> str:
        """sha256 of the file read in full through its open descriptor."""
        fd, size = self.fds[name], self.sizes[name]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        data = bytearray()
        while len(data) < size:
            piece = os.pread(fd, size - len(data), len(data))
            if not piece:
                break
            data += piece
        return sha256(bytes(data))

    def reads_all(self) -> None:
        for name, digest in self.digests.items():
            assert self.read(name) == digest, f"{name}: what was read differs from what was written"

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


@pytest.fixture
def cached_reader(ha):
    """An inline file and files of one and of two chunks, written, read and held open on client2."""
    directory = ha.mnt("client2") / "cached"
    directory.mkdir()
    reader = CachedReader(directory, [20_000, CHUNK_SIZE // 2, CHUNK_SIZE + 5000])
    try:
        yield reader
    finally:
        reader.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_etcd_majority_lost_nothing_is_acknowledged_until_it_is_back(ha, workload, history, cached_reader):
    """Two of the three etcd members killed: no metaserver can renew or take the leader key. The
    primary stops acknowledging within its lease and says why to a client that gives up; the
    mounts wait (inside their retry_s), and a mount that had read files before reads them on (from
    what it holds of them and the chunkservers); once the members are back a primary is elected
    again and writes go on; nothing acknowledged is lost (the workload's and the history's checks)."""
    primary = ha.primary()
    assert primary is not None
    members = ["etcd1", "etcd2"]
    healed_at = []

    def heal() -> None:
        healed_at.append(time.monotonic())
        for name in members:
            ha.start(name)

    def recovered() -> None:
        wait_until(lambda: ha.primary() is not None, 60, "a primary again")
        report(workload, "two of three etcd members killed, then started again", healed_at[0], time.monotonic(),
               "a primary again")

    with during_fault(workload, lambda: [ha.kill(name) for name in members], heal, recovered) as lost_at:
        wait_until(lambda: ha.role(primary) != "primary", 30, f"{primary} no longer the primary")
        print(f"\nthe primary stopped serving {time.monotonic() - lost_at:.1f} s after the etcd majority was lost")
        errors: list[OSError | None] = []
        asking = threading.Thread(target=lambda: errors.append(gives_up(ha)))
        asking.start()
        writes = workload.writes  # past its lease since the loss
        cached_reader.reads_all()  # no metaserver answers
        time.sleep(3)  # the fault's duration: nothing may be acknowledged meanwhile
        assert workload.writes == writes, "a write was acknowledged without an etcd majority"
        assert ha.primary() is None
        cached_reader.reads_all()
        asking.join(30)
        error = errors[0] if errors else None
        assert error is not None and error.errno == errno.EIO and "etcd does not answer" in str(error), error
    assert "made-without-a-primary" not in os.listdir(ha.mnt("client2"))
    cached_reader.reads_all()  # and after


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_primary_cut_off_from_etcd_while_clients_reach_it(ha, workload):
    etcd = [name for name in ha.nodes if name.startswith("etcd")]
    with primary_replaced(ha, workload, "the primary cut off from etcd", lambda old: ha.cut_between(old, etcd),
                          ha.heal_cut) as takeover:
        assert ha.role(takeover.old) != "primary"  # it fenced itself: clients reaching it are sent on


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_link_between_the_metaservers_cut(ha, workload):
    primary = ha.primary()
    assert primary is not None
    standby = next(name for name in ha.metaservers if name != primary)
    with during_fault(workload, lambda: ha.cut_between(primary, [standby]), lambda: ha.heal_cut(primary),
                      recovered=lambda: wait_until(lambda: standby_in_sync(ha), 90,
                                                   "the standby caught up and named in etcd again")):
        # the primary stops waiting for the standby (once, standby_timeout_s) and names it no more in etcd
        wait_until(lambda: not standby_in_sync(ha), 60, "the standby out of sync")
        workload.keeps_working(2)
        assert ha.primary() == primary  # the standby, behind, does not take over


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_both_metaservers_killed_and_restarted(ha, workload):
    def restart() -> None:
        for name in ha.metaservers:
            ha.kill(name)
        for name in ha.metaservers:
            ha.start(name)  # whichever etcd's sync record names takes the key

    with during_fault(workload, restart, lambda: None):
        wait_until(lambda: ha.primary() is not None and standby_in_sync(ha), 90, "a primary and a standby in sync")


@pytest.mark.long  # make test-long: the suite's 45-minute CI budget keeps the core faults
def test_removal_waits_for_the_standby(ha):
    """The chunks a removal drops are deleted from the chunkservers only once every standby that
    could take over has the removal. With the standby stopped (for less than standby_timeout_s,
    5 s, so it still counts) the unlink waits and its chunks stay, though the deleter passes every
    0.5 s and the removal is already in the primary's database; once the standby is woken and has
    it, the unlink returns and the chunks go."""
    path = ha.mnt("client1") / "removed-while-the-standby-is-stopped"
    path.write_bytes(os.urandom(2 * CHUNK_SIZE + 1000))
    versions = {f"{c.chunk_id:016x}_{c.version:016x}.chunk" for c in ha.layout(path).chunks}
    copies = lambda: {(name, p.name) for name in ha.chunkservers for p in ha.chunk_files(name) if p.name in versions}
    before = copies()
    primary = ha.primary()
    standby = next(name for name in ha.metaservers if name != primary)
    pid = ha.pid(standby)
    assert pid is not None and before
    failed: list[OSError] = []

    def unlink() -> None:
        try:
            path.unlink()
        except OSError as exc:
            failed.append(exc)

    unlinked = threading.Thread(target=unlink)
    os.kill(pid, signal.SIGSTOP)
    try:
        unlinked.start()
        stopped_until = time.monotonic() + 3  # the fault's duration, within standby_timeout_s
        while time.monotonic() < stopped_until:
            assert copies() == before, "chunks deleted before the standby had the removal"
            time.sleep(0.2)  # how often the chunkservers' disks are looked at meanwhile
        assert unlinked.is_alive(), "the unlink was acknowledged without the standby"
    finally:
        os.kill(pid, signal.SIGCONT)
    unlinked.join(60)
    assert not unlinked.is_alive() and not failed, failed
    wait_until(lambda: not copies(), 30, "the removed file's chunks deleted once the standby had the removal")
