"""Issue 22's rows on validation and ownership, against real daemons: raw signed requests with
values out of range are answered 400 with their errno and store nothing (rows 2-5), a commit
touches only the chunk versions its client reserved (row 6), and the mount goes on listing a
directory that holds an entry it cannot represent."""

from __future__ import annotations

import base64
import errno
import http.client
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from chunkfs import CHUNK_SIZE, auth
from chunkfs.checksum import chunk_checksum
from chunkfs.metaserver.db import MetaDB
from chunkfs.metaserver.namespace import Namespace
from chunkfs.protocol.chunk_client import CHECKSUM_HEADER
from conftest import chunkfs, wait_until

CLIENT = "validation-test"


def signed_request(address: str, secret: bytes, method: str, target: str, body: bytes = b"",
                   headers: dict | None = None) -> tuple[int, str, bytes]:
    """One request signed as chunkfs's clients sign them (the one place this module signs)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        all_headers = {"Host": address, "Content-Length": str(len(body)), **(headers or {})}
        as_read = [(name, value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value)
                   for name, value in all_headers.items()]  # as the server reads them
        all_headers[auth.HEADER] = auth.sign(secret, method, target, address, as_read, body)
        for name, value in all_headers.items():
            conn.putheader(name, value)  # bytes values go out as they are (a byte 0xE9, say)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


class RawApi:
    """A cluster's servers spoken to directly, as a client holding the secret could."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.secret = auth.load_secret(cluster.secret_file)

    def chunkserver(self, i: int) -> str:
        return f"127.0.0.1:{self.cluster.port + i}"

    def call(self, address: str, method: str, target: str, body: bytes = b"", headers: dict | None = None):
        status, content_type, raw = signed_request(address, self.secret, method, target, body, headers)
        return status, (json.loads(raw) if content_type.startswith("application/json") else raw)

    def fs(self, op: str, request: dict | bytes, client: str | bytes = CLIENT, headers: dict | None = None):
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        return self.call(self.cluster.metaserver, "POST", f"/v1/fs/{op}", body,
                         {"Content-Type": "application/json", "X-Chunkfs-Client": client, **(headers or {})})


def b64(name: bytes) -> str:
    return base64.b64encode(name).decode()


def assert_refused(answer, err: int) -> None:
    status, body = answer
    assert status == 400, answer
    assert body["errno"] == errno.errorcode[err], answer


@pytest.fixture(scope="module")
def api(cluster):
    return RawApi(cluster)


@pytest.fixture
def victim(cluster):
    """A small file the bad requests aim at; what it is before them is what it must be after."""
    path = cluster.mnt / f"victim-{uuid.uuid4().hex[:8]}"
    path.write_bytes(b"victim")
    yield path
    path.unlink(missing_ok=True)


def bad_requests(ino: int) -> list[tuple[str, dict | bytes, int]]:
    create = {"parent": 1, "name": b64(b"new-entry"), "mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0}
    commit = {"ino": ino, "size": 0, "mtime_ns": 0, "chunks": []}
    return [
        ("commit", {**commit, "size": -5}, errno.EINVAL),  # row 4
        ("commit", {**commit, "size": 2**63}, errno.EFBIG),
        ("commit", {**commit, "size": 2**50 + 1}, errno.EFBIG),
        ("setattr", {"ino": ino, "uid": 2**40}, errno.EINVAL),
        ("setattr", {"ino": ino, "gid": -1}, errno.EINVAL),
        ("create", {**create, "mode": 0o170000}, errno.EINVAL),
        ("create", {**create, "name": b64(b"nul\0inside")}, errno.EINVAL),
        ("create", {**create, "name": b64(b"x" * 256)}, errno.ENAMETOOLONG),
        ("create", {**create, "mode": stat.S_IFLNK | 0o777, "target": b64(b"t" * 100_000)}, errno.ENAMETOOLONG),
        ("create", {**create, "uid": 2**32}, errno.EINVAL),
        ("getattr", {"ino": 2**64}, errno.EINVAL),  # row 5
        ("getattr", {"ino": -1}, errno.EINVAL),
        ("getattr", b'{"ino": ' + b"9" * 400 + b"}", errno.EINVAL),
        ("setattr", {"ino": ino, "mode": -1}, errno.EINVAL),
        ("setattr", {"ino": ino, "mode": 0o170644}, errno.EINVAL),
        ("setattr", {"ino": ino, "mtime_ns": 2**63}, errno.EINVAL),
        ("lookup", {"parent": 1, "name": b64(b"a/b")}, errno.EINVAL),
        ("rename", {"old_parent": 1, "old_name": b64(b"x"), "new_parent": 1, "new_name": b64(b"..")}, errno.EINVAL),
        ("setxattr", {"ino": ino, "name": b64(b"user." + b"n" * 251), "value": b64(b"v")}, errno.ERANGE),
        ("setxattr", {"ino": ino, "name": b64(b"user.big"), "value": b64(b"v" * 65537)}, errno.E2BIG),
        ("readdir", {"ino": 1, "limit": 0}, errno.EINVAL),
        ("remove", {"parent": 1, "name": b64(b"x"), "is_dir": False, "open_by": "\u00e9"}, errno.EINVAL),
        ("reserve", {"count": -1}, errno.EINVAL),
        ("commit", {**commit, "chunks": [{"index": 0, "chunk_id": 2**64 - 1, "version": 1, "length": 1,
                                          "checksum": "0", "replicas": ["x"]}]}, errno.EINVAL),
    ]


def test_values_out_of_range_are_refused_with_their_errno_and_nothing_is_stored(cluster, api, victim):
    """Rows 4 and 5: each answered 400 with its errno, never a 500; the file and the directory
    are as they were, and every client still lists the directory."""
    before = os.stat(victim)
    names_before = set(os.listdir(cluster.mnt))
    for op, request, err in bad_requests(before.st_ino):
        assert_refused(api.fs(op, request), err)
    after = os.stat(victim)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_size, after.st_mtime_ns) == \
           (before.st_mode, before.st_uid, before.st_gid, before.st_size, before.st_mtime_ns)
    assert victim.read_bytes() == b"victim"
    assert set(os.listdir(cluster.mnt)) == names_before
    status, entries = api.fs("readdir", {"ino": 1})
    assert status == 200 and b"new-entry" not in {base64.b64decode(e["name"]) for e in entries}


def test_ids_in_paths_and_query_parameters_are_checked(cluster, api):
    """Rows 3 and 5 on the chunkservers' and the metaserver's paths and query parameters."""
    cs = api.chunkserver(1)
    refused = [
        (cs, "PUT", f"/v1/chunks/{2**64 - 1}/1"),
        (cs, "PUT", f"/v1/chunks/{2**63}/1"),
        (cs, "PUT", "/v1/chunks/5/1?base_version=-1"),
        (cs, "GET", f"/v1/chunks/{'9' * 400}/1"),
        (cs, "GET", "/v1/chunks/-1/1"),
        (cs, "DELETE", "/v1/chunks/1/0"),
        (cs, "GET", "/v1/chunks?min_age_s=nan"),
        (cluster.metaserver, "GET", "/v1/changes?since=-1"),
        (cluster.metaserver, "GET", f"/v1/changes?since={'1' * 400}"),
        (cluster.metaserver, "GET", "/v1/changes?wait_s=inf"),
        (cluster.metaserver, "GET", "/v1/changes?epoch=a%20b"),
        (cluster.metaserver, "GET", f"/v1/changes?epoch={'e' * 65}"),
    ]
    for address, method, target in refused:
        headers = {CHECKSUM_HEADER: chunk_checksum(b"junk")} if method == "PUT" else {}
        assert_refused(api.call(address, method, target, b"junk" if method == "PUT" else b"", headers), errno.EINVAL)
    status, _report = api.call(cluster.metaserver, "POST", "/v1/servers/gc", b'{"dry_run": true}',
                               {"Content-Type": "application/json"})
    assert status == 200


def test_a_client_id_that_is_not_a_token_is_refused_and_the_feed_goes_on(cluster, api, victim):
    """Row 2: a byte 0xE9 in X-Chunkfs-Client is a 400 at the edge; the change feed answers, and
    another client's chmod reaches the mount."""
    ino = os.stat(victim).st_ino
    assert_refused(api.fs("setattr", {"ino": ino, "mode": 0o600}, client=b"\xe9"), errno.EINVAL)
    assert_refused(api.fs("setattr", {"ino": ino, "mode": 0o600}, headers={"X-Request-Id": "a b"}), errno.EINVAL)
    assert stat.S_IMODE(os.stat(victim).st_mode) != 0o600
    status, batch = api.call(cluster.metaserver, "GET", "/v1/changes?since=0&wait_s=0")
    assert status == 200 and "changes" in batch
    status, _attr = api.fs("setattr", {"ino": ino, "mode": 0o600}, client="another-client")
    assert status == 200
    wait_until(lambda: stat.S_IMODE(os.stat(victim).st_mode) == 0o600, 15, "the mount saw the chmod")


def chunk_ref(index: int, chunk_id: int, version: int, data: bytes, replicas: list[str]) -> dict:
    return {"index": index, "chunk_id": chunk_id, "version": version, "length": len(data),
            "checksum": chunk_checksum(data), "replicas": replicas}


class Uploader:
    """Reserves versions as one client and stores a chunk under one of them on every server."""

    def __init__(self, api: RawApi, client: str) -> None:
        self.api, self.client = api, client
        # a client's reservations last as long as its session: it follows the feed, as mounts do
        status, _batch = api.call(api.cluster.metaserver, "GET", "/v1/changes?since=0&wait_s=0",
                                  headers={"X-Chunkfs-Client": client})
        assert status == 200
        status, self.reservation = api.fs("reserve", {"count": 4}, client=client)
        assert status == 200, self.reservation
        self.used = 0

    def upload(self, index: int, data: bytes) -> dict:
        chunk_id = self.reservation["first_chunk_id"] + self.used
        version = self.reservation["first_version"] + self.used
        self.used += 1
        replicas = []
        for server in self.reservation["servers"]:
            status, answer = self.api.call(server["address"], "PUT", f"/v1/chunks/{chunk_id}/{version}", data,
                                           {CHECKSUM_HEADER: chunk_checksum(data)})
            assert status == 200, answer
            replicas.append(server["id"])
        return chunk_ref(index, chunk_id, version, data, replicas)


def new_file(api: RawApi, cluster, name: str) -> int:
    (cluster.mnt / name).write_bytes(b"")
    return os.stat(cluster.mnt / name).st_ino


def commit(api: RawApi, ino: int, chunks: list[dict], client: str, discard: list[dict] = ()):
    size = sum(c["length"] for c in chunks)
    return api.fs("commit", {"ino": ino, "size": size, "mtime_ns": 1, "chunks": chunks, "discard": list(discard)},
                  client=client)


def test_a_commit_touches_only_the_versions_its_client_reserved(cluster, api):
    """Row 6: another file's version can be neither discarded nor adopted; a version reserved by
    one client cannot be committed by another, nor to a second file; a retried commit is fine."""
    other = cluster.mnt / "other-file"
    data = os.urandom(200_000)
    other.write_bytes(data)
    status, layout = api.fs("open", {"ino": os.stat(other).st_ino})
    assert status == 200 and layout["chunks"]
    theirs = layout["chunks"][0]
    target = new_file(api, cluster, "target-file")
    for attack in ({"discard": [theirs]}, {"chunks": [theirs]}):
        status, answer = commit(api, target, attack.get("chunks", []), CLIENT, attack.get("discard", []))
        assert (status, answer["errno"]) == (403, "EPERM"), answer

    uploader = Uploader(api, CLIENT)
    mine = uploader.upload(0, b"mine" * 1000)
    status, answer = commit(api, target, [mine], "someone-else")
    assert (status, answer["errno"]) == (403, "EPERM"), answer
    assert commit(api, target, [mine], CLIENT)[0] == 200
    assert commit(api, target, [mine], CLIENT)[0] == 200  # the same commit again: a retry
    second = new_file(api, cluster, "second-file")
    status, answer = commit(api, second, [mine], CLIENT)
    assert (status, answer["errno"]) == (403, "EPERM"), answer

    assert api.fs("open", {"ino": os.stat(other).st_ino})[1]["chunks"] == layout["chunks"]
    assert cluster.status()["pending_deletions"] == 0
    for address in layout["servers"].values():
        status, body = api.call(address, "GET", f"/v1/chunks/{theirs['chunk_id']}/{theirs['version']}")
        assert status == 200 and body == data[:len(body)]
    wait_until(lambda: (cluster.mnt / "target-file").read_bytes() == b"mine" * 1000, 15,
               "the mount read the committed chunk")


def chunk_file_path(cluster, server: str, chunk_id: int, version: int) -> Path:
    return cluster.dir / "chunkservers" / server / "chunks" / f"{chunk_id & 0xff:02x}" / f"{chunk_id:016x}_{version:016x}.chunk"


def test_ids_out_of_range_on_disk_and_reservations_over_restarts(fresh_cluster):
    """Row 3: a chunk stored under id 2^64-1 (before ids were checked) and one under 2^63-1 do
    not stop a chunkserver's registration nor use the ids up; versions reserved before a
    metaserver restart are committed after it."""
    cluster, api = fresh_cluster, RawApi(fresh_cluster)
    assert_refused(api.call(api.chunkserver(1), "PUT", f"/v1/chunks/{2**64 - 1}/1", b"x",
                            {CHECKSUM_HEADER: chunk_checksum(b"x")}), errno.EINVAL)
    status, _ = api.call(api.chunkserver(1), "PUT", f"/v1/chunks/{2**63 - 1}/1", b"x",
                         {CHECKSUM_HEADER: chunk_checksum(b"x")})
    assert status == 200
    for bad_id in (2**64 - 1, -1):  # row 3, and row 5's "gc once a chunk id -1 is stored"
        planted = chunk_file_path(cluster, "cs1", bad_id, 1)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(chunk_file_path(cluster, "cs1", 2**63 - 1, 1).read_bytes())

    uploader = Uploader(api, CLIENT)
    mine = uploader.upload(0, b"before the restart")
    target = new_file(api, cluster, "committed-after-restart")
    cluster.kill("metaserver")
    cluster.kill("cs1")
    cluster.up()
    cluster.wait_alive(3)

    assert commit(api, target, [mine], CLIENT)[0] == 200
    data = os.urandom(CHUNK_SIZE // 4)
    (cluster.mnt / "written-after").write_bytes(data)
    assert (cluster.mnt / "written-after").read_bytes() == data
    wait_until(lambda: (cluster.mnt / "committed-after-restart").read_bytes() == b"before the restart", 15,
               "the mount read the commit made after the restart")
    status, reservation = api.fs("reserve", {"count": 1})
    assert status == 200 and reservation["first_chunk_id"] < 2**62 and reservation["first_version"] < 2**62
    for _ in range(2):  # gc asks every chunkserver for its inventory
        status, _report = api.call(cluster.metaserver, "POST", "/v1/servers/gc", b'{"dry_run": true}',
                                   {"Content-Type": "application/json"})
        assert status == 200
    cs_log = (cluster.dir / "logs" / "cs1.log").read_text()
    assert cs_log.count("outside 1..2^63-1") == 2, cs_log  # left out of its inventory, each logged once
    meta_log = (cluster.dir / "logs" / "metaserver.log").read_text()
    assert meta_log.count("far past any handed out") == 1, meta_log  # id 2^63-1 moved no counter
    assert "Traceback" not in meta_log


def stat_errno(path: Path) -> int | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


def test_the_mount_leaves_out_an_entry_it_cannot_represent(fresh_cluster):
    """Row 4's other half: attributes stored before the metaserver checked them (uid 2^40, a
    negative size, mode 0o170000) make that file EIO, and `ls` of its directory lists the rest.
    The files are made by another client, so the mount has cached nothing of them; the bad
    values are written straight into the metaserver's database (LMDB takes a second writer)."""
    cluster, api = fresh_cluster, RawApi(fresh_cluster)
    status, directory_attr = api.fs("create", {"parent": 1, "name": b64(b"dir"), "mode": stat.S_IFDIR | 0o755,
                                               "uid": 0, "gid": 0}, client="another-client")
    assert status == 200, directory_attr
    inodes = {}
    for name in ("good", "big-uid", "negative-size", "no-type"):
        status, attr = api.fs("create", {"parent": directory_attr["ino"], "name": b64(name.encode()),
                                         "mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0}, client="another-client")
        assert status == 200, attr
        inodes[name] = attr["ino"]
    db = MetaDB(cluster.dir / "meta")
    try:
        namespace = Namespace(db, 3)
        with db.env.begin(write=True) as txn:
            for name, field, value in (("big-uid", "uid", 2**40), ("negative-size", "size", -5),
                                       ("no-type", "mode", 0o170000)):
                inode = namespace.get(txn, inodes[name])
                setattr(inode, field, value)
                namespace.put(txn, inodes[name], inode)
    finally:
        db.close()
    directory = cluster.mnt / "dir"
    assert os.listdir(directory) == ["good"]
    for name in ("big-uid", "negative-size", "no-type"):
        assert stat_errno(directory / name) == errno.EIO
    assert os.stat(directory / "good").st_size == 0
    assert chunkfs("status", "--dir", cluster.dir).returncode == 0
