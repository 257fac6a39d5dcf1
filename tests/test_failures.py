"""What users see when parts of the cluster fail or misbehave, and that it heals."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from chunkfs import CHUNK_SIZE
from chunkfs.mounts import is_mounted
from conftest import chunkfs, chunkserver_reads, drop_caches, wait_until

MiB = 1024 * 1024


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_since(cluster, before: dict[str, float]) -> dict[str, float]:
    return {name: read - before.get(name, 0) for name, read in chunkserver_reads(cluster).items()}


@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--heartbeat-timeout-s", "30")}], indirect=True)
def test_reads_and_writes_go_on_with_a_chunkserver_killed(fresh_cluster):
    """The mount fails over by itself: the metaserver still counts the killed server alive (its
    heartbeat time-out is 30 s here) when the file is read again."""
    data = os.urandom(3 * CHUNK_SIZE + 1234)
    (fresh_cluster.mnt / "before").write_bytes(data)
    drop_caches(fresh_cluster)
    before = chunkserver_reads(fresh_cluster)
    assert (fresh_cluster.mnt / "before").read_bytes() == data
    served = served_since(fresh_cluster, before)
    victim = max(served, key=served.get)  # the replica the file was (mostly) read from
    assert served[victim] > 0, served
    fresh_cluster.kill(victim, signal.SIGKILL)
    # a fresh read (no page cache, no chunk cache) goes to whichever replica still answers
    drop_caches(fresh_cluster)
    before = chunkserver_reads(fresh_cluster)
    assert victim not in before
    assert sum(s["alive"] for s in fresh_cluster.status()["servers"]) == 3, "the metaserver has not noticed"
    assert (fresh_cluster.mnt / "before").read_bytes() == data
    assert sum(served_since(fresh_cluster, before).values()) >= len(data), "the other replicas served every byte"
    (fresh_cluster.mnt / "during").write_bytes(data[::-1])
    assert (fresh_cluster.mnt / "during").read_bytes() == data[::-1]
    fresh_cluster.wait_alive(2, timeout_s=90)  # chunks under goal are counted by the replicator's next scan
    wait_until(lambda: fresh_cluster.status()["chunks_under_goal"] >= 4, 30, "the chunks on the killed server under goal")


def test_requests_without_the_secret_are_refused_and_change_nothing(fresh_cluster):
    meta = f"http://{fresh_cluster.metaserver}"
    body = {"parent": 1, "name": "aW50cnVkZXI=", "mode": 0o100644, "uid": 0, "gid": 0}  # "intruder"
    assert httpx.post(f"{meta}/v1/fs/create", json=body).status_code == 401
    forged = {"X-Chunkfs-Auth": f"{int(time.time())}.{'0' * 64}"}
    assert httpx.post(f"{meta}/v1/fs/create", json=body, headers=forged).status_code == 401
    assert httpx.get(f"{meta}/v1/status").status_code == 401
    assert not (fresh_cluster.mnt / "intruder").exists()
    chunkserver = f"http://127.0.0.1:{fresh_cluster.port + 1}"
    put = httpx.put(f"{chunkserver}/v1/chunks/1/1", content=b"x", headers={"X-Chunkfs-Checksum": "0"})
    assert put.status_code == 401
    assert httpx.get(f"{chunkserver}/v1/chunks/1/1").status_code == 401
    assert httpx.get(f"{meta}/health").status_code == 200


def test_bad_requests_get_a_4xx_with_a_message(fresh_cluster):
    from chunkfs import auth
    secret = auth.load_secret(fresh_cluster.secret_file)
    target, body = "/v1/fs/create", b"{not json"
    response = httpx.post(f"http://{fresh_cluster.metaserver}{target}", content=body,
                          headers={auth.HEADER: auth.sign(secret, "POST", target, fresh_cluster.metaserver,
                                                          body=body)})
    assert 400 <= response.status_code < 500
    assert "bad request body" in response.json()["message"]


def create_as_retry(cluster, name: bytes, rid: str):
    """A create sent the way the mount sends it, under a request id of our choosing."""
    import trio

    from chunkfs import auth, request_id
    from chunkfs.protocol import records as r
    from chunkfs.protocol.http import SignedHttp
    from chunkfs.protocol.meta_client import MetaClient

    async def create():
        request_id.current.set(rid)
        http = SignedHttp(auth.load_secret(cluster.secret_file), retry_s=2, trio_native=True)
        try:
            meta = MetaClient(http, cluster.metaserver, client_id="test-client")
            return await meta.create(r.CreateReq(parent=1, name=name, mode=0o100644, uid=0, gid=0))
        finally:
            await http.aclose()

    return trio.run(create)


def test_metaserver_down_gives_eio_after_retries_and_the_mount_recovers(fresh_cluster):
    from chunkfs.errors import FsError

    (fresh_cluster.mnt / "kept").write_text("still here")
    first = create_as_retry(fresh_cluster, b"made-once", "req-1")
    fresh_cluster.kill("metaserver", signal.SIGKILL)
    retry_s = float(dict(o.split("=", 1) for o in fresh_cluster.mount_options.split(","))["retry_s"])
    mount_log = fresh_cluster.dir / "logs" / "mount.log"
    log_since = mount_log.stat().st_size
    started = time.monotonic()
    with pytest.raises(OSError) as info:  # a name never looked up: no cache can answer it
        os.stat(fresh_cluster.mnt / "new-name")
    waited_s = time.monotonic() - started
    assert info.value.errno == errno.EIO
    # the EIO is the transport giving up on a metadata call (the kernel's lookup, or first the
    # getattr of the directory when its attributes timed out), logged once where it became EIO
    gave_up = [line for line in mount_log.read_bytes()[log_since:].decode(errors="replace").splitlines()
               if " ERROR chunkfs.mount.operations: " in line and "/v1/fs/" in line and "request_id=" in line]
    assert len(gave_up) == 1, gave_up
    # It kept trying for its whole retry_s (a lower bound: load only lengthens it), then gave up
    # instead of hanging: the upper bound is the promise "EIO after retry_s", with a margin of
    # 5 x retry_s for a loaded 2-core machine (a mount that hangs never answers at all).
    assert retry_s <= waited_s < 6 * retry_s, (waited_s, retry_s)
    assert is_mounted(fresh_cluster.mnt)
    fresh_cluster.up()  # starts what is not running: the metaserver
    assert (fresh_cluster.mnt / "kept").read_text() == "still here"
    (fresh_cluster.mnt / "after").write_text("written after the restart")
    assert (fresh_cluster.mnt / "after").read_text() == "written after the restart"
    # the reply to a create was lost to the crash: its retry is answered, not run again (no EEXIST)
    assert create_as_retry(fresh_cluster, b"made-once", "req-1").ino == first.ino
    with pytest.raises(FsError) as again:
        create_as_retry(fresh_cluster, b"made-once", "req-2")  # a new create of the same name
    assert again.value.errno == errno.EEXIST


def test_everything_survives_down_and_up(fresh_cluster):
    files = {f"f{i}": os.urandom(i * 1_000_003) for i in range(6)}
    (fresh_cluster.mnt / "d").mkdir()
    for name, data in files.items():
        (fresh_cluster.mnt / "d" / name).write_bytes(data)
    os.symlink("d/f1", fresh_cluster.mnt / "link")
    fresh_cluster.down()
    assert not is_mounted(fresh_cluster.mnt)
    assert fresh_cluster.pid("metaserver") is None
    fresh_cluster.up()
    for name, data in files.items():
        assert (fresh_cluster.mnt / "d" / name).read_bytes() == data
    assert os.readlink(fresh_cluster.mnt / "link") == "d/f1"


def test_deleted_files_chunks_are_removed_from_chunkservers(fresh_cluster):
    (fresh_cluster.mnt / "doomed").write_bytes(os.urandom(2 * CHUNK_SIZE))
    chunk_files = lambda: list((fresh_cluster.dir / "chunkservers").glob("*/chunks/*/*.chunk"))
    assert len(chunk_files()) == 6
    os.unlink(fresh_cluster.mnt / "doomed")
    wait_until(lambda: chunk_files() == [], 30, "the unlinked file's 6 chunk files deleted")
    assert fresh_cluster.status()["pending_deletions"] == 0


@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--scrub-mb-per-s", "0")}], indirect=True)
def test_a_corrupt_replica_is_never_served(fresh_cluster):
    """The two replicas a read tries first are corrupt (scrub is off, so only the read can find
    them): the good bytes are served, both bad copies reported and rebuilt."""
    data = os.urandom(CHUNK_SIZE)
    (fresh_cluster.mnt / "precious").write_bytes(data)
    [chunk] = json.loads(chunkfs("info", fresh_cluster.mnt / "precious", "--dir", fresh_cluster.dir, "--json").stdout)["chunks"]
    by_id = {(d / "server_id").read_text().strip(): d.name for d in (fresh_cluster.dir / "chunkservers").iterdir()}
    tried_first = [by_id[sid] for sid in chunk["replicas"][:2]]  # the order a read tries them in
    name = f"{chunk['chunk_id'] & 0xff:02x}/{chunk['chunk_id']:016x}_{chunk['version']:016x}.chunk"
    bad = {}
    for server in tried_first:
        copy = fresh_cluster.dir / "chunkservers" / server / "chunks" / name
        raw = bytearray(copy.read_bytes())
        raw[5000 + 4096] ^= 0xFF
        copy.write_bytes(bytes(raw))
        bad[server] = bytes(raw)
    drop_caches(fresh_cluster)
    assert (fresh_cluster.mnt / "precious").read_bytes() == data
    wait_until(lambda: fresh_cluster.status()["corrupt_found"] >= 2, 30, "both corrupt copies reported by the read")
    copies = lambda: {server: (fresh_cluster.dir / "chunkservers" / server / "chunks" / name).read_bytes()
                      if (fresh_cluster.dir / "chunkservers" / server / "chunks" / name).exists() else None
                      for server in tried_first}
    wait_until(lambda: all(copy is not None and copy != bad[server] for server, copy in copies().items())
               and fresh_cluster.status()["chunks_under_goal"] == 0, 60, "both corrupt copies rebuilt")
    good = (fresh_cluster.dir / "chunkservers" / by_id[chunk["replicas"][2]] / "chunks" / name).read_bytes()
    assert list(copies().values()) == [good, good]  # rebuilt from the good copy



@pytest.mark.parametrize("fresh_cluster", [{"up_options": ("--scrub-mb-per-s", "0")}], indirect=True)
def test_a_read_of_a_chunk_corrupt_on_every_server_fails_and_the_read_reports_each_copy(fresh_cluster):
    """Chunkservers send chunks unverified; the mount's checksum finds the damage, asks each
    server again with its block checks, and that is how the servers learn of it (scrub is off)."""
    (fresh_cluster.mnt / "doomed").write_bytes(os.urandom(CHUNK_SIZE))
    copies = list((fresh_cluster.dir / "chunkservers").glob("cs*/chunks/*/*.chunk"))
    assert len(copies) == 3
    for chunk in copies:
        raw = bytearray(chunk.read_bytes())
        raw[4096 + 123_456] ^= 0x01
        chunk.write_bytes(bytes(raw))
    fresh_cluster.down()
    fresh_cluster.up()
    with pytest.raises(OSError) as failed:
        (fresh_cluster.mnt / "doomed").read_bytes()
    assert failed.value.errno == errno.EIO
    wait_until(lambda: fresh_cluster.status()["corrupt_found"] >= 3, 30, "every corrupt copy reported")

@pytest.fixture
def helper_installed():
    helper = Path("/sbin/mount.chunkfs")
    if os.geteuid() != 0:
        pytest.skip("installing the mount helper needs root")
    existed = helper.exists()
    backup = helper.read_bytes() if existed else None
    chunkfs("install")
    try:
        yield helper
    finally:
        if backup is None:
            helper.unlink(missing_ok=True)
        else:
            helper.write_bytes(backup)


def _unmount_quietly(mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def test_mount_t_chunkfs_and_fstab(cluster, helper_installed, tmp_path):
    target = tmp_path / "second-client"
    target.mkdir()
    try:
        subprocess.run(["mount", "-t", "chunkfs", cluster.metaserver, str(target),
                        "-o", f"secret={cluster.secret_file},cache_dir={tmp_path}/cache"], check=True, timeout=60)
        assert is_mounted(target)
        (target / "via-mount-t").write_text("hello")
        assert (cluster.mnt / "via-mount-t").read_text() == "hello"  # the other client sees it
        subprocess.run(["umount", str(target)], check=True, timeout=30)
        assert not is_mounted(target)

        fstab = tmp_path / "fstab"
        fstab.write_text(f"{cluster.metaserver} {target} chunkfs _netdev,noauto,secret={cluster.secret_file},cache_dir={tmp_path}/cache 0 0\n")
        subprocess.run(["mount", "-T", str(fstab), str(target)], check=True, timeout=60)
        assert (target / "via-mount-t").read_text() == "hello"
        subprocess.run(["umount", str(target)], check=True, timeout=30)
        assert not is_mounted(target)
    finally:
        _unmount_quietly(target)


def test_subdirectory_and_read_only_mounts(cluster, helper_installed, tmp_path):
    (cluster.mnt / "projects" / "web").mkdir(parents=True)
    (cluster.mnt / "projects" / "web" / "index.html").write_text("<h1>hi</h1>")
    (cluster.mnt / "outside").write_text("not visible below /projects")
    sub, read_only = tmp_path / "sub", tmp_path / "ro"
    sub.mkdir()
    read_only.mkdir()
    try:
        subprocess.run(["mount", "-t", "chunkfs", f"{cluster.metaserver}:/projects", str(sub),
                        "-o", f"secret={cluster.secret_file},cache_dir={tmp_path}/cache-sub"], check=True, timeout=60)
        assert sorted(os.listdir(sub)) == ["web"]
        assert (sub / "web" / "index.html").read_text() == "<h1>hi</h1>"
        assert os.path.realpath(sub / "..") == str(tmp_path)  # the kernel never leaves the mount's root
        (sub / "web" / "new").write_text("written through the subdirectory mount")
        assert (cluster.mnt / "projects" / "web" / "new").read_text() == "written through the subdirectory mount"
        os.rename(sub / "web" / "new", sub / "moved")
        assert (cluster.mnt / "projects" / "moved").exists()
        assert "goal 3" in chunkfs("goal", sub).stdout  # the CLI maps the mount's root to /projects

        fstab = tmp_path / "fstab"
        fstab.write_text(f"{cluster.metaserver}:/projects/web {read_only} chunkfs ro,_netdev,noauto,"
                         f"secret={cluster.secret_file},cache_dir={tmp_path}/cache-ro 0 0\n")
        subprocess.run(["mount", "-T", str(fstab), str(read_only)], check=True, timeout=60)
        assert (read_only / "index.html").read_text() == "<h1>hi</h1>"
        for change in (lambda: (read_only / "x").write_text("x"), lambda: os.unlink(read_only / "index.html"),
                       lambda: os.mkdir(read_only / "d"), lambda: os.chmod(read_only / "index.html", 0o600)):
            with pytest.raises(OSError) as failure:
                change()
            assert failure.value.errno == errno.EROFS
        assert (cluster.mnt / "projects" / "web" / "index.html").read_text() == "<h1>hi</h1>"

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        missing = subprocess.run(["mount", "-t", "chunkfs", f"{cluster.metaserver}:/no-such-dir", str(elsewhere),
                                  "-o", f"secret={cluster.secret_file},cache_dir={tmp_path}/cache-x"], capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "no-such-dir" in missing.stderr
    finally:
        _unmount_quietly(sub)
        _unmount_quietly(read_only)


def test_chunkserver_partial_write_makes_a_new_version_from_the_old(fresh_cluster):
    import trio

    from chunkfs import auth
    from chunkfs.checksum import chunk_checksum
    from chunkfs.errors import FsError
    from chunkfs.protocol.chunk_client import ChunkClient
    from chunkfs.protocol.http import SignedHttp

    address = f"127.0.0.1:{fresh_cluster.port + 1}"
    base = os.urandom(100_000)
    piece = b"patched!" * 1000

    async def scenario():
        http = SignedHttp(auth.load_secret(fresh_cluster.secret_file), retry_s=2, trio_native=True)
        client = ChunkClient(http)
        try:
            await client.put(address, 77, 1, base, chunk_checksum(base))
            checksum = await client.put_patch(address, 77, 2, 1, 50_000, piece, chunk_checksum(piece))
            expected = base[:50_000] + piece + base[50_000 + len(piece):]
            assert checksum == chunk_checksum(expected)
            assert await client.get(address, 77, 2) == expected
            assert await client.get(address, 77, 1) == base  # the old version is untouched
            past_end = await client.put_patch(address, 77, 3, 2, 200_000, b"x", chunk_checksum(b"x"))
            assert past_end == chunk_checksum(expected + bytes(100_000) + b"x")
            with pytest.raises(FsError) as damaged:
                await client.put_patch(address, 77, 4, 1, 0, piece, "0" * 16)  # damaged in transit
            assert damaged.value.errno == errno.EBADMSG
            with pytest.raises(FsError) as no_base:
                await client.put_patch(address, 77, 5, 999, 0, piece, chunk_checksum(piece))  # no base
            assert no_base.value.errno == errno.ENOENT
        finally:
            await http.aclose()

    trio.run(scenario)
