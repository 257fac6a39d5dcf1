"""Security between the parts, against real daemons: role credentials, chunk tokens, exports,
TLS and the open endpoints. Every refusal is made with hand-made HTTP requests (httpx and
`chunkfs.auth.sign`, as an attacker holding one role's key would), and each test checks that
nothing stored changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from chunkfs import client as chunkfs_api
from chunkfs import auth, chunk_tokens
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.cli.cluster_access import local_cluster_file
from chunkfs.daemons import module_command, read_pid, spawn, stop_pid
from chunkfs.tls import TlsFiles
from conftest import Cluster, _cluster, another_mount, chunkfs, free_port_block, fsync_directory, wait_until

ROLES = ("client", "chunkserver", "gateway", "admin")


def call(address: str, key: bytes | None, method: str, path: str, record=None, headers=None,
         body: bytes | None = None, sign_body: bytes | None = None) -> httpx.Response:
    """One request as sent by hand: signed with `key` (a secret file's content) unless None;
    `sign_body` signs another body than the one sent (a changed body under a signature)."""
    content = r.json_encode(record) if record is not None else (body or b"")
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        signed_body = content if sign_body is None else sign_body
        sent[auth.HEADER] = auth.sign(key, method, path, address, list(sent.items()), signed_body)
    return httpx.request(method, f"http://{address}{path}", content=content, headers=sent, timeout=30)


def errno_of(response: httpx.Response) -> str:
    return response.json().get("errno", "") if response.content else ""


# ---- units ----------------------------------------------------------------------------------

def test_a_credential_signs_under_its_key_id_and_only_its_key_verifies():
    key_id, key = "Kabc123", "k" * 64
    text = auth.credential_text(key_id, key).encode()
    header = auth.sign(text, "POST", "/v1/fs/getattr", "h:1", [], b"{}")
    assert header.startswith(key_id + ":")

    class Ring:
        def key(self, asked: str):
            return (key.encode(), "client") if asked == key_id else None

    signed = auth.Verifier(Ring()).check_head("POST", "/v1/fs/getattr", "h:1", [], header)
    assert signed is not None and signed.role == "client" and signed.key_id == key_id
    forged = header.replace(key_id, "Kother", 1)
    assert auth.Verifier(Ring()).check_head("POST", "/v1/fs/getattr", "h:1", [], forged) is None
    # the cluster secret signs without a key id, as before roles
    plain = auth.sign(b"s" * 32, "POST", "/v1/fs/getattr", "h:1", [], b"{}")
    assert ":" not in plain and auth.Verifier(b"s" * 32).check_head("POST", "/v1/fs/getattr", "h:1", [], plain).role \
        == auth.CLUSTER_ROLE


def test_a_chunk_token_allows_its_operation_chunk_and_versions_until_it_expires_to_its_holder():
    key = chunk_tokens.chunk_key(b"s" * 32)
    issuer = chunk_tokens.TokenIssuer(key, ttl_s=60)
    read = issuer.issue(chunk_tokens.READ, 7, 3, holder="Kholder1", now=1000)
    # good: the answer is the key id the request presenting it must be signed with
    assert chunk_tokens.refusal(key, read, chunk_tokens.READ, 7, 3, now=1050) == "T-Kholder1"
    refused = {
        "other chunk": chunk_tokens.refusal(key, read, chunk_tokens.READ, 8, 3, now=1050),
        "other version": chunk_tokens.refusal(key, read, chunk_tokens.READ, 7, 4, now=1050),
        "delete": chunk_tokens.refusal(key, read, chunk_tokens.DELETE, 7, 3, now=1050),
        "expired": chunk_tokens.refusal(key, read, chunk_tokens.READ, 7, 3, now=1061),
        "other key": chunk_tokens.refusal(chunk_tokens.chunk_key(b"t" * 32), read, chunk_tokens.READ, 7, 3, now=1050),
        "changed": chunk_tokens.refusal(key, read.replace("r.", "rwd.", 1), chunk_tokens.DELETE, 7, 3, now=1050),
        "junk": chunk_tokens.refusal(key, "r.7.3.3.1060.Kholder1.zz", chunk_tokens.READ, 7, 3, now=1050),
        "another holder": chunk_tokens.refusal(key, read.replace("Kholder1", "Kholder2"), chunk_tokens.READ, 7, 3,
                                               now=1050),
    }
    assert {what: e.errno for what, e in refused.items()} == {
        **{what: errno.EACCES for what in refused}, "expired": errno.EKEYEXPIRED}
    reserved = issuer.issue(chunk_tokens.READ + chunk_tokens.WRITE, None, 100, 163, holder="cluster", now=1000)
    assert chunk_tokens.refusal(key, reserved, chunk_tokens.WRITE, 12345, 163, now=1000) == "T-cluster"
    assert isinstance(chunk_tokens.refusal(key, reserved, chunk_tokens.WRITE, 12345, 164, now=1000), FsError)
    # the holder's token key: what its requests are signed with, derived by the chunkservers
    holders = chunk_tokens.HolderKeys(key)
    assert holders.key("T-Kholder1") == (chunk_tokens.holder_key(key, "Kholder1"), chunk_tokens.HOLDER_ROLE)
    assert holders.key("Kholder1") is None and holders.key("T-") is None
    assert chunk_tokens.holder_key(key, "Kholder1") != chunk_tokens.holder_key(key, "Kholder2")
    nonce, wrapped = chunk_tokens.wrap(key, b"cs-key")
    assert chunk_tokens.unwrap(nonce, wrapped, b"cs-key") == key and bytes.fromhex(wrapped) != key
    assert chunk_tokens.unwrap(nonce, wrapped, b"other") != key


def test_a_server_address_must_be_host_and_port():
    from chunkfs.errors import FsError
    from chunkfs.protocol.limits import check_server_address

    for good in ["10.0.0.1:9521", "cs-1.example.org:1", "[::1]:9521", "localhost:65535"]:
        check_server_address(good)
    for bad in ["not a url", "🙂:80", "host", "h:0", "h:65536", "[zz]:1", "a..b:1", "http://h:1", "-h:1", ":80"]:
        with pytest.raises(FsError) as err:
            check_server_address(bad)
        assert err.value.errno == errno.EINVAL, bad


# ---- a cluster whose parts run on role keys -----------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A cluster whose chunkservers and mount run with role credentials of their own (`up --roles`)."""
    yield from _cluster(tmp_path_factory, chunkservers=2, goal=2, up_options=("--roles",))


def credential(cluster: Cluster, role: str, name: str, *options: str) -> bytes:
    """A new credential (made with the cluster secret, as an operator would); its file's content."""
    out = cluster.root / f"key-{role}-{name}-{os.urandom(3).hex()}"
    chunkfs("credentials", "add", role, name, "--out", out, *options, "--dir", cluster.dir)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return auth.load_secret(out)


def secret_file(path: Path, content: bytes) -> Path:
    """A secret file holding `content` (a credential), as its holder keeps it (0600)."""
    path.write_bytes(content + b"\n")
    path.chmod(0o600)
    return path


def stored_state(cluster: Cluster) -> tuple:
    """What a refused request must not change: servers, counts, the root's names."""
    status = cluster.status()
    return (sorted((s["id"], s["address"]) for s in status["servers"]), status["files"], status["directories"],
            sorted(os.listdir(cluster.mnt)))


def hello(server_id: str, address: str) -> r.ServerHello:
    return r.ServerHello(id=server_id, address=address, capacity_bytes=1 << 30, used_bytes=0)


def test_each_role_is_refused_the_other_roles_routes(secured):
    c = secured
    (c.mnt / "kept.txt").write_text("kept")
    keys = {role: credential(c, role, f"t-{role}") for role in ROLES}
    before = stored_state(c)
    create = r.CreateReq(parent=1, name=b"evil", mode=stat.S_IFREG | 0o644, uid=0, gid=0)
    # (method, path, record, the roles it is allowed to)
    routes = [
        ("POST", "/v1/fs/getattr", r.InodeReq(1), {"client", "gateway", "admin"}),
        ("POST", "/v1/fs/create", create, {"client", "gateway", "admin"}),
        ("POST", "/v1/fs/fsck", r.FsckReq(), {"admin"}),
        ("GET", "/v1/status", None, {"client", "gateway", "admin"}),
        ("POST", "/v1/servers/hello", hello("evil-server", "10.9.9.9:9521"), {"chunkserver"}),
        ("POST", "/v1/servers/gc", r.GcReq(dry_run=True), {"admin"}),
        ("POST", "/v1/servers/drain", r.DrainReq("no-such-server"), {"admin"}),
        ("GET", "/v1/credentials", None, {"admin"}),
        ("POST", "/v1/credentials/add", r.CredentialReq(role="admin", name="evil"), {"admin"}),
        ("GET", "/v1/backup", None, {"admin"}),
    ]
    refused = []
    for role, key in keys.items():
        for method, path, record, allowed in routes:
            if role in allowed:
                continue  # the allowed calls are made by the daemons themselves (and below)
            response = call(c.metaserver, key, method, path, record)
            assert response.status_code == 403 and errno_of(response) == "EPERM", (role, path, response.text)
            refused.append(f"{role} {method} {path}")
    print(f"{len(refused)} calls refused 403 EPERM:", *refused, sep="\n  ")
    assert stored_state(c) == before
    listing = call(c.metaserver, keys["admin"], "GET", "/v1/credentials").json()
    assert "evil" not in {entry["name"] for entry in listing} and all("salt" not in e for e in listing)
    # the allowed ones work: the client reads, the admin lists; the chunkservers run on their keys
    assert call(c.metaserver, keys["client"], "POST", "/v1/fs/getattr", r.InodeReq(1)).status_code == 200
    assert (c.mnt / "kept.txt").read_text() == "kept"
    assert sum(s["alive"] for s in c.status()["servers"]) == 2


def test_a_revoked_key_is_refused_at_once(secured):
    c = secured
    key = credential(c, "client", "soon-revoked")
    assert call(c.metaserver, key, "POST", "/v1/fs/getattr", r.InodeReq(1)).status_code == 200
    key_id = auth.split_credential(key)[0]
    chunkfs("credentials", "revoke", key_id, "--dir", c.dir)
    # refused from the very next request on: the revoke answers once the metaserver dropped the key
    refused = call(c.metaserver, key, "POST", "/v1/fs/getattr", r.InodeReq(1))
    assert refused.status_code == 401, refused.text
    listed = json.loads(chunkfs("credentials", "list", "--json", "--dir", c.dir).stdout)
    assert key_id not in {entry["key_id"] for entry in listed}


def test_a_registration_with_junk_is_refused_and_nothing_is_stored(secured):
    c = secured
    key = credential(c, "chunkserver", "junk-sender")
    before = stored_state(c)
    for address in ["not a url", "🙂:80", "host", "10.0.0.1:0", "10.0.0.1:99999", "[zz::1]:80", "a..b:80",
                    "http://10.0.0.1:80", "-x:1", "x" * 250 + ":1"]:
        body = json.dumps({"id": "junk", "address": address, "capacity_bytes": 1, "used_bytes": 0}).encode()
        response = call(c.metaserver, key, "POST", "/v1/servers/hello", body=body)
        assert response.status_code == 400 and errno_of(response) == "EINVAL", (address, response.text)
    body = json.dumps({"id": "junk", "address": "10.0.0.1:80", "capacity_bytes": 1, "used_bytes": 2}).encode()
    assert call(c.metaserver, key, "POST", "/v1/servers/hello", body=body).status_code == 400
    assert stored_state(c) == before


def test_replays_and_changed_bodies_are_refused(secured):
    c = secured
    key = credential(c, "client", "replayer")
    create = r.CreateReq(parent=1, name=b"replayed", mode=stat.S_IFREG | 0o644, uid=0, gid=0)
    content = r.json_encode(create)
    headers = {"Content-Type": "application/json"}
    headers[auth.HEADER] = auth.sign(key, "POST", "/v1/fs/create", c.metaserver, list(headers.items()), content)
    first = httpx.post(f"http://{c.metaserver}/v1/fs/create", content=content, headers=headers)
    assert first.status_code == 200
    again = httpx.post(f"http://{c.metaserver}/v1/fs/create", content=content, headers=headers)
    assert again.status_code == 401 and "replay" in again.text
    other = r.json_encode(r.CreateReq(parent=1, name=b"changed", mode=stat.S_IFREG | 0o644, uid=0, gid=0))
    changed = call(c.metaserver, key, "POST", "/v1/fs/create", body=other, sign_body=content)
    assert changed.status_code == 401
    wait_until(lambda: "replayed" in os.listdir(c.mnt), 10, "the one create seen")
    assert "changed" not in os.listdir(c.mnt)


def _layout(c: Cluster, key: bytes, name: bytes) -> r.FileLayout:
    attr = call(c.metaserver, key, "POST", "/v1/fs/lookup", r.LookupReq(1, name)).json()
    response = call(c.metaserver, key, "POST", "/v1/fs/open", r.OpenReq(attr["ino"]))
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=r.FileLayout)


def _token_credential(c: Cluster, key: bytes) -> bytes:
    """The token key of `key`'s holder, as the metaserver hands it out (wrapped with `key`)."""
    found = msgspec.json.decode(call(c.metaserver, key, "POST", "/v1/fs/token_key", body=b"{}").content,
                                type=r.TokenKey)
    unwrapped = chunk_tokens.unwrap(found.nonce, found.wrapped, auth.split_credential(key)[1])
    return auth.credential_text(found.key_id, unwrapped.decode()).encode()


def test_chunk_tokens_are_checked_by_the_chunkservers_and_serve_only_their_holder(secured):
    c = secured
    (c.mnt / "a.bin").write_bytes(os.urandom(200_000))
    (c.mnt / "b.bin").write_bytes(os.urandom(200_000))
    client_key = credential(c, "client", "token-tester")
    other_key = credential(c, "client", "token-thief")
    a, b = _layout(c, client_key, b"a.bin"), _layout(c, client_key, b"b.bin")
    ref_a, ref_b = a.chunks[0], b.chunks[0]
    server = a.servers[ref_a.replicas[0]]
    presenter = _token_credential(c, client_key)
    assert presenter.startswith(f"ck1:T-{auth.split_credential(client_key)[0]}:".encode())
    thief = _token_credential(c, other_key)

    def chunk(ref: r.ChunkRef, token: str | None, method: str = "GET", version: int | None = None,
              key: bytes | None = presenter) -> httpx.Response:
        headers = {chunk_tokens.TOKEN_HEADER: token} if token is not None else {}
        return call(server, key, method, f"/v1/chunks/{ref.chunk_id}/{version or ref.version}", headers=headers)

    good = chunk(ref_a, ref_a.token)
    assert good.status_code == 200 and len(good.content) == ref_a.length  # the control
    # a request captured on the wire, sent again as it was
    captured_headers = {"Content-Type": "application/json", chunk_tokens.TOKEN_HEADER: ref_a.token}
    target = f"/v1/chunks/{ref_a.chunk_id}/{ref_a.version}"
    captured_headers[auth.HEADER] = auth.sign(presenter, "GET", target, server, list(captured_headers.items()), b"")
    assert httpx.get(f"http://{server}{target}", headers=captured_headers).status_code == 200
    outcomes = {
        "token of chunk B for chunk A": chunk(ref_a, ref_b.token),
        "token for another version": chunk(ref_a, ref_a.token, version=ref_a.version + 1),
        "read token used to delete": chunk(ref_a, ref_a.token, "DELETE"),
        "read token used to write": chunk(ref_a, ref_a.token, "PUT"),
        "token with its expiry changed": chunk(ref_a, _with_expiry(ref_a.token, int(time.time()) + 10_000)),
        "token presented unsigned": chunk(ref_a, ref_a.token, key=None),
        "token presented by another client (its own token key)": chunk(ref_a, ref_a.token, key=thief),
        "token signed with the holder's credential key, not its token key": chunk(ref_a, ref_a.token, key=client_key),
        "a captured request with its token, sent again": httpx.get(f"http://{server}{target}",
                                                                    headers=captured_headers),
        "no token, unsigned": chunk(ref_a, None, key=None),
        "no token, signed with the holder's token key": chunk(ref_a, None),
        "no token, signed with a client's key": chunk(ref_a, None, key=client_key),
        "no token, signed with the cluster secret": chunk(ref_a, None, key=c.secret_file.read_bytes().strip()),
    }
    # an expired token, made with the real chunk key (as only the metaserver could)
    issuer = chunk_tokens.TokenIssuer(chunk_tokens.chunk_key(c.secret_file.read_bytes().strip()), ttl_s=-5)
    holder = auth.split_credential(client_key)[0]
    outcomes["expired token"] = chunk(ref_a, issuer.issue(chunk_tokens.READ, ref_a.chunk_id, ref_a.version,
                                                          holder=holder))
    for what, response in outcomes.items():
        print(f"{what}: {response.status_code} {errno_of(response) if response.content[:1] == b'{' else ''}")
        assert response.status_code in (401, 403), (what, response.status_code, response.text)
    assert errno_of(outcomes["expired token"]) == "EKEYEXPIRED"
    assert errno_of(outcomes["token of chunk B for chunk A"]) == "EACCES"
    assert outcomes["token presented by another client (its own token key)"].status_code == 403
    assert "another holder" in outcomes["token presented by another client (its own token key)"].text
    assert chunk(ref_a, ref_a.token).status_code == 200  # nothing was deleted
    assert (c.mnt / "a.bin").stat().st_size == 200_000


def _with_expiry(token: str, expires: int) -> str:
    ops, chunk, first, last, _, holder, mac = token.split(".")
    return f"{ops}.{chunk}.{first}.{last}.{expires}.{holder}.{mac}"


def test_exports_read_only_subtree_and_root_squash(secured, tmp_path):
    c = secured
    (c.mnt / "projects").mkdir(exist_ok=True)
    (c.mnt / "home").mkdir(exist_ok=True)
    (c.mnt / "projects" / "plan.txt").write_text("plan")
    (c.mnt / "home" / "secret.txt").write_text("home secret")
    for directory in ("projects", "home"):  # written behind: on the metaserver before its state is compared
        fsync_directory(c.mnt / directory)
    home_ino = os.stat(c.mnt / "home").st_ino
    secret_ino = os.stat(c.mnt / "home" / "secret.txt").st_ino
    projects_ino = os.stat(c.mnt / "projects").st_ino
    ro = credential(c, "client", "ro-projects", "--subtree", "/projects", "--read-only")
    before = stored_state(c)
    refused = {
        "lookup in / (outside)": call(c.metaserver, ro, "POST", "/v1/fs/lookup", r.LookupReq(1, b"home")),
        "getattr of /home by inode number": call(c.metaserver, ro, "POST", "/v1/fs/getattr", r.InodeReq(home_ino)),
        "open of /home/secret.txt by inode": call(c.metaserver, ro, "POST", "/v1/fs/open", r.OpenReq(secret_ino)),
        "readdir of /home": call(c.metaserver, ro, "POST", "/v1/fs/readdir", r.ReaddirReq(home_ino)),
        "resolve /home": call(c.metaserver, ro, "POST", "/v1/fs/resolve", r.PathReq(b"/home")),
        "resolve /projects/../home": call(c.metaserver, ro, "POST", "/v1/fs/resolve", r.PathReq(b"/projects/../home")),
        "parent of /projects (..)": call(c.metaserver, ro, "POST", "/v1/fs/parent", r.InodeReq(projects_ino)),
        "create in /projects (read-only)": call(c.metaserver, ro, "POST", "/v1/fs/create",
                                                r.CreateReq(parent=projects_ino, name=b"x", mode=stat.S_IFREG | 0o644,
                                                            uid=0, gid=0)),
        "reserve (read-only)": call(c.metaserver, ro, "POST", "/v1/fs/reserve", r.ReserveReq(4)),
        "setattr in /projects (read-only)": call(c.metaserver, ro, "POST", "/v1/fs/setattr",
                                                 r.SetattrReq(ino=projects_ino, mode=0o777)),
        "lock of /home/secret.txt": call(c.metaserver, ro, "POST", "/v1/fs/lock",
                                         r.LockReq(ino=secret_ino, owner=1, type=fcntl.F_WRLCK, start=0, end=0),
                                         headers={"X-Chunkfs-Client": "lock-thief"}),
    }
    for what, response in refused.items():
        print(f"{what}: {response.status_code} {errno_of(response)}")
        # outside the export: EACCES; a change inside a read-only one: EROFS (exports.py)
        assert errno_of(response) == ("EROFS" if "(read-only)" in what else "EACCES"), (what, response.text)
    assert stored_state(c) == before
    # the honest way in works: mount /projects with the read-only key, read, fail to write
    key_file = secret_file(tmp_path / "ro.key", ro)
    target = tmp_path / "ro-mount"
    target.mkdir()
    chunkfs("mount", f"{c.metaserver}:/projects", target, "--secret-file", key_file, "-o", f"cache_dir={target}-cache")
    try:
        assert (target / "plan.txt").read_text() == "plan"
        with pytest.raises(OSError) as err:
            (target / "new.txt").write_text("no")
        assert err.value.errno == errno.EROFS
    finally:
        subprocess.run(["fusermount3", "-u", str(target)], check=False)
    squash = credential(c, "client", "squashed", "--maproot", "65534")
    made = call(c.metaserver, squash, "POST", "/v1/fs/create",
                r.CreateReq(parent=projects_ino, name=b"by-root", mode=stat.S_IFREG | 0o644, uid=0, gid=0))
    assert made.status_code == 200 and made.json()["uid"] == 65534 and made.json()["gid"] == 65534
    chown = call(c.metaserver, squash, "POST", "/v1/fs/setattr", r.SetattrReq(ino=made.json()["ino"], uid=0))
    assert chown.status_code == 403 and errno_of(chown) == "EPERM"
    assert os.stat(c.mnt / "projects" / "by-root").st_uid == 65534


def batch(c: Cluster, key: bytes, *ops: tuple[str, object]) -> list[tuple[int, str, object]]:
    """A write-behind batch sent by hand: each change's (errno, message, reply)."""
    body = r.BatchReq([r.BatchOp(op, msgspec.Raw(r.json_encode(req))) for op, req in ops])
    response = call(c.metaserver, key, "POST", "/v1/fs/batch", body=r.json_encode(body),  # a client id of its own
                    headers={"X-Chunkfs-Client": f"batcher-{auth.split_credential(key)[0] or 'cluster'}"})
    assert response.status_code == 200, response.text
    return [tuple(outcome) for outcome in response.json()]


def test_a_batch_is_no_way_around_exports(secured, tmp_path):
    """Each change of a batch passes the checks its own call would: read-only, subtree (in the
    state the changes before it in the batch left) and root squash; the refused ones change
    nothing, the others are applied. A mount on a subtree key makes, renames and chmods files
    behind (write-behind) without a write-back error."""
    c = secured
    for directory in ("inside", "outside"):
        (c.mnt / directory).mkdir(exist_ok=True)
    (c.mnt / "outside" / "kept.txt").write_text("kept")
    fsync_directory(c.mnt / "outside")
    inside, outside = os.stat(c.mnt / "inside").st_ino, os.stat(c.mnt / "outside").st_ino
    kept, kept_mode = os.stat(c.mnt / "outside" / "kept.txt").st_ino, os.stat(c.mnt / "outside" / "kept.txt").st_mode
    ro = credential(c, "client", "batch-ro", "--subtree", "/inside", "--read-only")
    sub = credential(c, "client", "batch-sub", "--subtree", "/inside", "--maproot", "65534")
    before = stored_state(c)
    refused = batch(c, ro, ("setattr", r.SetattrReq(ino=inside, mode=0o777)),
                    ("create", r.CreateReq(parent=inside, name=b"ro", mode=stat.S_IFREG | 0o644, uid=1, gid=1)))
    assert [e for e, _, _ in refused] == [errno.EROFS, errno.EROFS], refused
    refused = batch(c, sub, ("setattr", r.SetattrReq(ino=kept, mode=0o777)),
                    ("remove", r.RemoveReq(outside, b"kept.txt", False)),
                    ("rename", r.RenameReq(outside, b"kept.txt", inside, b"stolen")),
                    ("link", r.LinkReq(kept, inside, b"linked")),
                    ("setxattr", r.XattrReq(kept, b"user.x", b"1")))
    assert [e for e, _, _ in refused] == [errno.EACCES] * 5, refused
    assert stored_state(c) == before
    assert (c.mnt / "outside" / "kept.txt").read_text() == "kept"
    assert os.stat(c.mnt / "outside" / "kept.txt").st_mode == kept_mode
    # not batchable: what hands out or moves chunks, or may touch a subtree, comes on its own
    refused_whole = call(c.metaserver, sub, "POST", "/v1/fs/batch", body=r.json_encode(r.BatchReq(
        [r.BatchOp("concat", msgspec.Raw(r.json_encode(r.ConcatReq(ino=kept, sources=[kept], mtime_ns=1))))])))
    assert refused_whole.status_code == 400 and errno_of(refused_whole) == "EINVAL"
    # inside: a file the batch makes is the caller's for the changes after it; root is squashed
    first = call(c.metaserver, sub, "POST", "/v1/fs/reserve_inodes", r.ReserveReq(1)).json()
    made = batch(c, sub, ("create", r.CreateReq(parent=inside, name=b"new", mode=stat.S_IFREG | 0o644, uid=0, gid=0,
                                                ino=first)),
                 ("setattr", r.SetattrReq(ino=first, mode=0o600)),
                 ("setattr", r.SetattrReq(ino=first, uid=0)))
    assert [e for e, _, _ in made] == [0, 0, errno.EPERM], made
    assert made[0][2]["uid"] == 65534 and made[1][2]["mode"] & 0o777 == 0o600
    assert os.stat(c.mnt / "inside" / "new").st_uid == 65534
    # the honest way: a mount of /inside on that key answers its changes itself and sends them behind
    key_file = tmp_path / "sub.key"
    key_file.write_bytes(sub + b"\n")
    key_file.chmod(0o600)
    target = tmp_path / "sub-mount"
    target.mkdir()
    chunkfs("mount", f"{c.metaserver}:/inside", target, "--secret-file", key_file, "-o", f"cache_dir={target}-cache")
    try:
        (target / "made").mkdir()
        for i in range(5):
            (target / "made" / f"f{i}").write_bytes(b"%d" % i)
        os.chmod(target / "made" / "f1", 0o600)
        os.rename(target / "made" / "f2", target / "made" / "moved")
        os.unlink(target / "made" / "f3")
        fsync_directory(target / "made")  # a write-back error would be raised here
    finally:
        subprocess.run(["fusermount3", "-u", str(target)], check=False)
    assert sorted(os.listdir(c.mnt / "inside" / "made")) == ["f0", "f1", "f4", "moved"]
    assert (c.mnt / "inside" / "made" / "moved").read_bytes() == b"2"
    assert stat.S_IMODE(os.stat(c.mnt / "inside" / "made" / "f1").st_mode) == 0o600


def test_a_batch_is_refused_to_the_roles_without_filesystem_calls(secured):
    c = secured
    body = r.json_encode(r.BatchReq([r.BatchOp("setattr", msgspec.Raw(r.json_encode(r.SetattrReq(ino=1, mode=0o777))))]))
    for role in ("chunkserver",):
        response = call(c.metaserver, credential(c, role, f"batch-{role}"), "POST", "/v1/fs/batch", body=body)
        assert response.status_code == 403 and errno_of(response) == "EPERM", response.text
    assert stat.S_IMODE(os.stat(c.mnt).st_mode) != 0o777


def test_exports_limit_the_goals_set_and_the_networks_requests_come_from(secured):
    c = secured
    (c.mnt / "goals").mkdir(exist_ok=True)
    ino = os.stat(c.mnt / "goals").st_ino
    goals = credential(c, "client", "goals-2-3", "--goals", "2-3")
    too_many = call(c.metaserver, goals, "POST", "/v1/fs/goal", r.GoalReq(ino=ino, goal=5))
    assert too_many.status_code == 403 and errno_of(too_many) == "EPERM", too_many.text
    assert call(c.metaserver, goals, "POST", "/v1/fs/goal", r.GoalReq(ino=ino, goal=2)).status_code == 200
    elsewhere = credential(c, "client", "from-elsewhere", "--network", "10.99.0.0/16")
    refused = call(c.metaserver, elsewhere, "POST", "/v1/fs/getattr", r.InodeReq(1))
    assert errno_of(refused) == "EACCES" and "127.0.0.1" in refused.text, refused.text
    here = credential(c, "client", "from-here", "--network", "10.99.0.0/16", "--network", "127.0.0.0/8")
    assert call(c.metaserver, here, "POST", "/v1/fs/getattr", r.InodeReq(1)).status_code == 200
    bad = chunkfs("credentials", "add", "client", "bad", "--network", "not-a-net", "--dir", c.dir, check=False)
    assert bad.returncode != 0 and "not a network" in bad.stderr


def test_the_python_api_on_a_subtree_export_sees_its_subtree_only(secured, tmp_path):
    """`chunkfs.client` with a client credential exported `/projects` (read-write): it connects
    to `HOST:PORT:/projects` only (the whole cluster and `/home` are EACCES), sees that directory
    as its root, and every way out of it ends inside it (ENOENT: absolute and relative symlinks)
    or is refused before a call (EINVAL: a path through `..` above the root)."""
    c = secured
    inside = c.mnt / "projects" / "api"
    inside.mkdir(parents=True, exist_ok=True)
    (inside / "notes.txt").write_text("notes")
    (c.mnt / "home").mkdir(exist_ok=True)
    (c.mnt / "home" / "secret.txt").write_text("home secret")
    for name, target in (("abs-link", "/home/secret.txt"), ("rel-link", "../../home/secret.txt")):
        if not (inside / name).is_symlink():
            os.symlink(target, inside / name)
    key_file = secret_file(tmp_path / "projects.key", credential(c, "client", "api-projects", "--subtree", "/projects"))
    for outside in (c.metaserver, f"{c.metaserver}:/home"):
        with pytest.raises(PermissionError) as err:
            chunkfs_api.connect(outside, secret_file=key_file, retry_s=5)
        assert err.value.errno == errno.EACCES and "export" in str(err.value), (outside, err.value)
    with chunkfs_api.connect(f"{c.metaserver}:/projects", secret_file=key_file, retry_s=5) as fs:
        assert "api" in fs.listdir("/") and "home" not in fs.listdir("/")
        with fs.open("/api/notes.txt") as f:
            assert f.read() == b"notes"
        # a symlink's `..` stops at the root, an absolute one starts there: both end inside
        for path, expected in (("/home/secret.txt", errno.ENOENT), ("/api/abs-link", errno.ENOENT),
                               ("/api/rel-link", errno.ENOENT), ("/../home/secret.txt", errno.EINVAL),
                               ("/api/../../home/secret.txt", errno.EINVAL)):
            with pytest.raises(OSError) as err:
                fs.open(path).close()
            assert err.value.errno == expected, (path, err.value)
        with fs.open("/api/written.txt", "wb") as f:  # the export is read-write: chunks go through its tokens
            f.write(b"by the api" * 100_000)
    assert (inside / "written.txt").read_bytes() == b"by the api" * 100_000


def lock_call(cluster: Cluster, key: bytes, client: str, op: str, record) -> httpx.Response:
    """A lock operation (`lock`, `testlock`, `reclaim_locks`, `locks`) as client `client`."""
    return call(cluster.metaserver, key, "POST", f"/v1/fs/{op}", record, headers={"X-Chunkfs-Client": client})


def test_a_read_only_export_locks_as_a_read_only_mount_does(secured):
    """Read locks and flock locks (shared or exclusive) are granted; a POSIX write lock is EBADF,
    Linux's answer for a descriptor not open for writing, which is all a read-only filesystem
    gives (NFSv4 answers so too)."""
    c = secured
    (c.mnt / "projects").mkdir(exist_ok=True)
    (c.mnt / "projects" / "ro-locked.txt").write_text("x")
    ro = credential(c, "client", "ro-locks", "--subtree", "/projects", "--read-only")
    projects_ino = os.stat(c.mnt / "projects").st_ino
    looked_up = call(c.metaserver, ro, "POST", "/v1/fs/lookup", r.LookupReq(projects_ino, b"ro-locked.txt"))
    ino = looked_up.json()["ino"]

    def lock(op: str, kind: int, flock: bool = False) -> httpx.Response:
        return lock_call(c, ro, "ro-reader", op, r.LockReq(ino=ino, owner=7, type=kind, flock=flock))

    write_lock = lock("lock", fcntl.F_WRLCK)
    assert write_lock.status_code != 200 and errno_of(write_lock) == "EBADF", write_lock.text
    for granted in (lock("lock", fcntl.F_RDLCK), lock("lock", fcntl.F_WRLCK, flock=True)):
        assert granted.status_code == 200 and granted.json()["granted"], granted.text
    assert lock("testlock", fcntl.F_WRLCK).json()["type"] == fcntl.F_UNLCK  # F_GETLK asks, takes nothing
    held = lock_call(c, auth.load_secret(c.secret_file), "admin", "locks", r.LocksReq(ino)).json()
    assert sorted((info["flock"], info["type"]) for info in held) == [(False, fcntl.F_RDLCK), (True, fcntl.F_WRLCK)]
    for flock in (False, True):
        assert lock("lock", fcntl.F_UNLCK, flock=flock).status_code == 200


@pytest.mark.long  # make test-long: a cluster of its own and a restart (~60 s), past the suite's CI budget
@pytest.mark.parametrize("fresh_cluster", [{"chunkservers": 1, "goal": 1,
                                            "up_options": ("--roles", "--lock-grace-s", "120")}], indirect=True)
def test_a_reclaim_gets_back_only_what_the_export_allows(fresh_cluster):
    """After a metaserver restart each client gives back the locks it held (reclaim, in the grace
    period); each is checked as a new lock would be: a hand-made reclaim gets no lock outside
    the credential's subtree, and no POSIX write lock of a read-only export. Files inside are
    given back although the restart forgot which files the credential had been shown."""
    c = fresh_cluster
    (c.mnt / "projects" / "deep").mkdir(parents=True)
    (c.mnt / "home").mkdir()
    names = ("projects/plan.txt", "projects/deep/notes.txt", "projects/shared.txt", "home/secret.txt", "elsewhere")
    for name in names:
        (c.mnt / name).write_text("x")
    fsync_directory(c.mnt / "projects")  # what the mount answered itself is on the metaserver before it is killed
    ino = {name: os.stat(c.mnt / name).st_ino for name in names}
    inside = credential(c, "client", "projects", "--subtree", "/projects")
    ro = credential(c, "client", "projects-ro", "--subtree", "/projects", "--read-only")
    secret = auth.load_secret(c.secret_file)

    def lock(name: str, kind: int, flock: bool = False) -> r.LockReq:
        return r.LockReq(ino=ino[name], owner=1, type=kind, flock=flock)

    # a client that held a lock and will not come back: the grace lasts its 120 s
    assert lock_call(c, secret, "gone", "lock", lock("elsewhere", fcntl.F_WRLCK)).json()["granted"]
    c.kill("metaserver")
    c.up()
    thief = lock_call(c, inside, "thief", "reclaim_locks", r.LockReclaimReq("before", [
        lock("home/secret.txt", fcntl.F_WRLCK), lock("projects/plan.txt", fcntl.F_WRLCK),
        lock("projects/deep/notes.txt", fcntl.F_WRLCK)]))
    assert thief.status_code == 200 and thief.json()["lost"] == [0], thief.text  # outside its subtree
    reader = lock_call(c, ro, "reader", "reclaim_locks", r.LockReclaimReq("before", [
        lock("projects/shared.txt", fcntl.F_WRLCK), lock("projects/shared.txt", fcntl.F_RDLCK),
        lock("projects/shared.txt", fcntl.F_WRLCK, flock=True)]))
    assert reader.status_code == 200 and reader.json()["lost"] == [0], reader.text  # a write lock, read-only
    held = lock_call(c, secret, "admin", "locks", r.LocksReq(0)).json()
    by_name = {number: name for name, number in ino.items()}
    assert sorted((info["client"], by_name[info["ino"]], info["flock"], info["type"]) for info in held) == [
        ("reader", "projects/shared.txt", False, fcntl.F_RDLCK), ("reader", "projects/shared.txt", True, fcntl.F_WRLCK),
        ("thief", "projects/deep/notes.txt", False, fcntl.F_WRLCK), ("thief", "projects/plan.txt", False, fcntl.F_WRLCK)]


def test_quotas_trash_and_snapshots_keep_to_roles_and_exports(secured):
    """The storage-safety calls: quota limits and the trash are an admin's; snapshots, trash
    times and quota reads stay inside a client's export, none on a read-only one, and a
    root-squashed snapshot gives root's files to the squashed uid."""
    c = secured
    for name in ("projects", "home"):
        (c.mnt / name).mkdir(exist_ok=True)
    (c.mnt / "home" / "secret.txt").write_text("home secret")
    (c.mnt / "projects" / "plan.txt").write_text("plan")
    for name in ("projects", "home"):  # written behind: on the metaserver before its state is compared
        fsync_directory(c.mnt / name)
    projects_ino, home_ino = os.stat(c.mnt / "projects").st_ino, os.stat(c.mnt / "home").st_ino
    secret_ino = os.stat(c.mnt / "home" / "secret.txt").st_ino
    admin = credential(c, "admin", "quota-admin")
    rw = credential(c, "client", "rw-projects", "--subtree", "/projects")
    ro = credential(c, "client", "ro-projects2", "--subtree", "/projects", "--read-only")
    assert call(c.metaserver, admin, "POST", "/v1/fs/quota_set",
                r.QuotaSetReq(ino=projects_ino, inodes_hard=1000)).status_code == 200
    before = stored_state(c)
    refused = {
        ("quota_set by a client", "EPERM"): call(c.metaserver, rw, "POST", "/v1/fs/quota_set",
                                                 r.QuotaSetReq(ino=projects_ino, bytes_hard=1)),
        ("trash_list by a client", "EPERM"): call(c.metaserver, rw, "POST", "/v1/fs/trash_list", r.TrashListReq()),
        ("trash_purge by a client", "EPERM"): call(c.metaserver, rw, "POST", "/v1/fs/trash_purge",
                                                   r.TrashPurgeReq(everything=True)),
        ("snapshot of /home/secret.txt into /projects", "EACCES"): call(
            c.metaserver, rw, "POST", "/v1/fs/snapshot", r.SnapshotReq(secret_ino, projects_ino, b"stolen")),
        ("snapshot of /projects into /home", "EACCES"): call(
            c.metaserver, rw, "POST", "/v1/fs/snapshot", r.SnapshotReq(projects_ino, home_ino, b"copy")),
        ("trash_time of /home", "EACCES"): call(c.metaserver, rw, "POST", "/v1/fs/trash_time",
                                                r.TrashTimeReq(home_ino, 0)),
        ("quota_list of the whole cluster", "EACCES"): call(c.metaserver, rw, "POST", "/v1/fs/quota_list",
                                                            r.InodeReq(1)),
        ("snapshot on a read-only export", "EROFS"): call(
            c.metaserver, ro, "POST", "/v1/fs/snapshot", r.SnapshotReq(projects_ino, projects_ino, b"copy")),
        ("trash_time on a read-only export", "EROFS"): call(c.metaserver, ro, "POST", "/v1/fs/trash_time",
                                                            r.TrashTimeReq(projects_ino, 0)),
    }
    for (what, expected), response in refused.items():
        print(f"{what}: {response.status_code} {errno_of(response)}")
        assert errno_of(response) == expected, (what, response.text)
    assert stored_state(c) == before
    # inside the export: its quotas, and a write's size limit asked with no directory (parent 0)
    listed = call(c.metaserver, rw, "POST", "/v1/fs/quota_list", r.InodeReq(projects_ino))
    assert listed.status_code == 200 and [q["ino"] for q in listed.json()] == [projects_ino], listed.text
    lookup = call(c.metaserver, rw, "POST", "/v1/fs/lookup", r.LookupReq(projects_ino, b"plan.txt")).json()
    limit = call(c.metaserver, rw, "POST", "/v1/fs/quota_size_limit", r.QuotaLimitReq(lookup["ino"]))
    assert limit.status_code == 200 and limit.json() == -1, limit.text
    squash = credential(c, "client", "squashed-snap", "--maproot", "65534")
    plan = os.stat(c.mnt / "projects" / "plan.txt")
    assert (plan.st_uid, plan.st_gid) == (0, 0)
    copy = call(c.metaserver, squash, "POST", "/v1/fs/snapshot", r.SnapshotReq(plan.st_ino, projects_ino, b"plan-copy"))
    assert copy.status_code == 200 and (copy.json()["uid"], copy.json()["gid"]) == (65534, 65534), copy.text
    wait_until(lambda: (c.mnt / "projects" / "plan-copy").exists(), 30, "the mount sees the snapshot")
    assert (c.mnt / "projects" / "plan-copy").read_text() == "plan"


def feed_changes(c: Cluster, key: bytes, client: str, since: int, epoch: str) -> r.ChangeBatch:
    """One poll of the change feed, by hand, as client `client` (no wait)."""
    response = call(c.metaserver, key, "GET", f"/v1/changes?since={since}&wait_s=0" + (f"&epoch={epoch}" if epoch else ""),
                    headers={"X-Chunkfs-Client": client})
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=r.ChangeBatch)


def test_the_change_feed_and_other_listings_show_an_export_nothing_outside(secured):
    """A client whose credential exports /projects polls the change feed by hand while another
    client works in /home and moves things across the edge: it is told nothing of /home (no
    name, no inode, no event), a move out reaches it as an unlink, a move in as a create; the
    file and the directory moved out are outside from then on. Its status shows no other client
    and no quota outside, its lock listing no lock outside, a statfs of /home the export's
    figures, and the reply log does not answer it another credential's reply."""
    c = secured
    for name in ("projects", "home"):
        (c.mnt / name).mkdir(exist_ok=True)
    (c.mnt / "projects" / "leaving.txt").write_text("x")
    (c.mnt / "projects" / "dir-out").mkdir()
    (c.mnt / "home" / "arriving.txt").write_text("x")
    (c.mnt / "home" / "locked.txt").write_text("x")
    for name in ("projects", "home"):
        fsync_directory(c.mnt / name)
    projects_ino, home_ino = os.stat(c.mnt / "projects").st_ino, os.stat(c.mnt / "home").st_ino
    dir_out_ino = os.stat(c.mnt / "projects" / "dir-out").st_ino
    spy = credential(c, "client", "feed-spy", "--subtree", "/projects")
    secret = auth.load_secret(c.secret_file)
    leaving = call(c.metaserver, spy, "POST", "/v1/fs/lookup", r.LookupReq(projects_ino, b"leaving.txt")).json()
    assert call(c.metaserver, spy, "POST", "/v1/fs/readdir", r.ReaddirReq(projects_ino)).status_code == 200
    start = feed_changes(c, spy, "feed-spy", 0, "")
    # another client works in /home and across the edge; a create in /projects comes last
    (c.mnt / "home" / "home-only-name.txt").write_text("x")
    os.chmod(c.mnt / "home" / "home-only-name.txt", 0o600)
    os.rename(c.mnt / "home" / "home-only-name.txt", c.mnt / "home" / "home-only-renamed.txt")
    os.rename(c.mnt / "projects" / "leaving.txt", c.mnt / "home" / "leaving.txt")
    os.rename(c.mnt / "projects" / "dir-out", c.mnt / "home" / "dir-out")
    os.rename(c.mnt / "home" / "arriving.txt", c.mnt / "projects" / "arriving.txt")
    (c.mnt / "projects" / "zz-last.txt").write_text("x")
    for name in ("projects", "home"):
        fsync_directory(c.mnt / name)
    told: list[r.Change] = []
    seq = [start.seq]

    def poll(key: bytes, client: str, into: list[r.Change], cursor: list[int]) -> bool:
        batch = feed_changes(c, key, client, cursor[0], start.epoch)
        assert not batch.reset
        into.extend(batch.changes)
        cursor[0] = batch.seq
        return (projects_ino, b"zz-last.txt") in {tuple(e) for change in into for e in change.entries}

    wait_until(lambda: poll(spy, "feed-spy", told, seq), 30, "the create in /projects told to the spy")
    everything: list[r.Change] = []  # the control: the cluster secret is told all of it
    everything_seq = [start.seq]
    wait_until(lambda: poll(secret, "feed-admin", everything, everything_seq), 30, "the feed, unfiltered")
    outside_names = {b"home-only-name.txt", b"home-only-renamed.txt"}
    assert outside_names <= {name for change in everything for _parent, name in change.entries}
    assert home_ino in {ino for change in everything for ino in change.inodes}
    entries = {tuple(e) for change in told for e in change.entries}
    inodes = {ino for change in told for ino in change.inodes}
    print("told to the /projects export:", sorted(entries), sorted(inodes))
    assert not {parent for parent, _name in entries} & {1, home_ino, dir_out_ino}, entries
    assert not {name for _parent, name in entries} & outside_names, entries
    assert {(projects_ino, b"leaving.txt"), (projects_ino, b"dir-out"), (projects_ino, b"arriving.txt")} <= entries
    assert not inodes & {1, home_ino, dir_out_ino, leaving["ino"]}, inodes
    # what moved out is outside from then on (it had been shown inside)
    for what, ino in (("file", leaving["ino"]), ("directory", dir_out_ino)):
        moved_out = call(c.metaserver, spy, "POST", "/v1/fs/getattr", r.InodeReq(ino))
        assert errno_of(moved_out) == "EACCES", (what, moved_out.text)
    # the other reads of /home by inode number, names and attributes
    outside_reads = {
        "lookup in /home": ("lookup", r.LookupReq(home_ino, b"leaving.txt")),
        "readdir-plus of /home": ("readdir", r.ReaddirReq(home_ino, xattr=b"user.tag")),
        "getxattr of a file moved out": ("getxattr", r.XattrReq(leaving["ino"], b"user.tag")),
        "listxattr of /home": ("listxattr", r.InodeReq(home_ino)),
        "quota_get of /home": ("quota_get", r.InodeReq(home_ino)),
        "trash_time_of /home": ("trash_time_of", r.InodeReq(home_ino)),
        "size limit of a file moved out": ("quota_size_limit", r.QuotaLimitReq(leaving["ino"])),
    }
    for what, (op, record) in outside_reads.items():
        response = call(c.metaserver, spy, "POST", f"/v1/fs/{op}", record)
        print(f"{what}: {response.status_code} {errno_of(response)}")
        assert errno_of(response) == "EACCES", (what, response.text)
    # the feed of an export's network is its network's too
    elsewhere = credential(c, "client", "feed-elsewhere", "--network", "10.99.0.0/16")
    refused = call(c.metaserver, elsewhere, "GET", "/v1/changes?since=0&wait_s=0")
    assert errno_of(refused) == "EACCES", refused.text
    # status, lock listing and statfs of something outside
    admin = credential(c, "admin", "feed-admin")
    assert call(c.metaserver, admin, "POST", "/v1/fs/quota_set",
                r.QuotaSetReq(ino=home_ino, bytes_hard=987_654_321, inodes_soft=1)).status_code == 200
    try:
        with open(c.mnt / "home" / "locked.txt", "rb+") as locked:
            fcntl.lockf(locked, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked_ino = os.fstat(locked.fileno()).st_ino
            wait_until(lambda: any(q["ino"] == home_ino for q in c.status()["quotas_over_soft"]), 30,
                       "/home over its soft limit in the status")
            status = call(c.metaserver, spy, "GET", "/v1/status").json()
            assert status["clients"] == [] and status["quotas_over_soft"] == [], status
            assert call(c.metaserver, admin, "GET", "/v1/status").json()["clients"]  # the control
            every_lock = call(c.metaserver, spy, "POST", "/v1/fs/locks", r.LocksReq(0))
            assert every_lock.status_code == 200, every_lock.text
            assert locked_ino not in {info["ino"] for info in every_lock.json()}, every_lock.text
            assert {info["client"] for info in every_lock.json()} <= {"", "feed-spy"}, every_lock.text
            assert locked_ino in {info["ino"] for info in call(c.metaserver, admin, "POST", "/v1/fs/locks",
                                                                r.LocksReq(0)).json()}
            one_lock = call(c.metaserver, spy, "POST", "/v1/fs/locks", r.LocksReq(locked_ino))
            assert errno_of(one_lock) == "EACCES", one_lock.text
        home_df = call(c.metaserver, admin, "POST", "/v1/fs/statfs", r.InodeReq(home_ino)).json()
        spied_df = call(c.metaserver, spy, "POST", "/v1/fs/statfs", r.InodeReq(home_ino)).json()
        assert home_df["total_bytes"] == 987_654_321 and spied_df["total_bytes"] != 987_654_321, (home_df, spied_df)
        cluster_df = call(c.metaserver, spy, "POST", "/v1/fs/statfs", r.InodeReq(projects_ino)).json()
        # both are the cluster's own totals, read one after the other: the chunkservers' disks are
        # shared with whatever else runs on this machine, so they may differ by what was written between
        assert abs(spied_df["total_bytes"] - cluster_df["total_bytes"]) < 256 * 1024 * 1024, (spied_df, cluster_df)
    finally:
        call(c.metaserver, admin, "POST", "/v1/fs/quota_remove", r.InodeReq(home_ino))
    # another credential's client id and request id (read off the wire, say): refused, before the
    # reply log is looked in (which keeps replies by credential too: test_units); its own id works
    victim = {"X-Chunkfs-Client": "victim-client", "X-Request-Id": "victimrid001", "X-Chunkfs-Attempt": "1"}
    made = call(c.metaserver, admin, "POST", "/v1/fs/create",
                r.CreateReq(parent=home_ino, name=b"victims-file", mode=stat.S_IFREG | 0o600, uid=0, gid=0),
                headers=victim)
    assert made.status_code == 200, made.text
    spy_create = r.CreateReq(parent=projects_ino, name=b"spys-file", mode=stat.S_IFREG | 0o600, uid=0, gid=0)
    as_victim = {k: v for k, v in victim.items() if k != "X-Chunkfs-Attempt"}
    stolen = {
        "a retried create (the reply log)": call(c.metaserver, spy, "POST", "/v1/fs/create", spy_create,
                                                 headers=as_victim),
        "its leases given back": call(c.metaserver, spy, "POST", "/v1/fs/release_leases", r.LeaseReq([home_ino]),
                                      headers=as_victim),
        "its feed polled": call(c.metaserver, spy, "GET", "/v1/changes?since=0&wait_s=0", headers=as_victim),
    }
    for what, response in stolen.items():
        print(f"as another credential's client, {what}: {response.status_code} {errno_of(response)}")
        assert response.status_code == 403 and errno_of(response) == "EPERM", (what, response.text)
    assert not (c.mnt / "projects" / "spys-file").exists()
    own = call(c.metaserver, spy, "POST", "/v1/fs/create", spy_create,
               headers={**as_victim, "X-Chunkfs-Client": "feed-spy"})
    assert own.status_code == 200 and own.json()["ino"] != made.json()["ino"], own.text
    wait_until(lambda: (c.mnt / "projects" / "spys-file").exists(), 30, "the spy's own create made")


def test_links_renames_and_inode_numbers_do_not_cross_an_exports_edge(secured):
    """A client whose credential exports /edge-in sends by hand what would carry a file across
    its export's edge: a file outside linked in by inode number, a file inside linked out, renames
    and an exchange across the edge, an open by inode number of a file only outside; each is
    EACCES (anything outside is, whatever it is) and changes nothing. A file it was shown that
    leaves the export is outside from then on: hard-linked outside and its link inside removed,
    or its directory moved out; one whose other link is inside stays, and so does one with a
    link on each side."""
    c = secured
    inside, outside = c.mnt / "edge-in", c.mnt / "edge-out"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in ("shown.txt", "linked-out.txt", "twice.txt", "sub/deep.txt"):
        (inside / path).write_text(path)
    os.link(inside / "twice.txt", inside / "twice-too.txt")
    (outside / "secret.txt").write_text("secret")
    for directory in (inside, inside / "sub", outside):
        fsync_directory(directory)
    ino = {name: os.stat(path).st_ino for name, path in {
        "in": inside, "out": outside, "sub": inside / "sub", "shown": inside / "shown.txt", "deep": inside / "sub/deep.txt",
        "linked-out": inside / "linked-out.txt", "twice": inside / "twice.txt", "secret": outside / "secret.txt"}.items()}
    spy = credential(c, "client", "edge", "--subtree", "/edge-in")

    def as_spy(op: str, record) -> httpx.Response:
        return call(c.metaserver, spy, "POST", f"/v1/fs/{op}", record)

    for directory in ("in", "sub"):  # shown its files, as a mount's listing would
        assert as_spy("readdir", r.ReaddirReq(ino[directory])).status_code == 200
    before = (stored_state(c), sorted(os.listdir(inside)), sorted(os.listdir(outside)))
    attacks = {
        "link of /edge-out/secret.txt into the export by inode number": ("link", r.LinkReq(ino["secret"], ino["in"],
                                                                                           b"stolen")),
        "link of a file inside to a name outside": ("link", r.LinkReq(ino["shown"], ino["out"], b"leaked")),
        "rename of a file inside to outside": ("rename", r.RenameReq(ino["in"], b"shown.txt", ino["out"], b"moved")),
        "rename of a file outside to inside": ("rename", r.RenameReq(ino["out"], b"secret.txt", ino["in"], b"stolen")),
        "rename of a directory inside to outside": ("rename", r.RenameReq(ino["in"], b"sub", ino["out"], b"sub")),
        "exchange across the edge": ("rename", r.RenameReq(ino["in"], b"shown.txt", ino["out"], b"secret.txt",
                                                           flags=r.RENAME_EXCHANGE)),
        "open of /edge-out/secret.txt by inode number": ("open", r.OpenReq(ino["secret"])),
        "remove in /edge-out by inode number": ("remove", r.RemoveReq(ino["out"], b"secret.txt", False)),
    }
    for what, (op, record) in attacks.items():
        response = as_spy(op, record)
        print(f"{what}: {response.status_code} {errno_of(response)}")
        assert response.status_code == 403 and errno_of(response) == "EACCES", (what, response.text)
    assert (stored_state(c), sorted(os.listdir(inside)), sorted(os.listdir(outside))) == before
    # a file with a link on each side is inside (it is reachable there)
    os.link(inside / "linked-out.txt", outside / "linked-out.txt")
    fsync_directory(outside)
    assert as_spy("open", r.OpenReq(ino["linked-out"])).status_code == 200
    # another client removes its link inside; the one outside stays: it has left the export
    os.unlink(inside / "linked-out.txt")
    # and moves a directory out, with a file the spy was shown in it
    os.rename(inside / "sub", outside / "sub")
    # and removes one of two links inside: the other is still there
    os.unlink(inside / "twice.txt")
    for directory in (inside, outside):
        fsync_directory(directory)
    for what, (op, record) in {
        "getattr of the file linked out": ("getattr", r.InodeReq(ino["linked-out"])),
        "open of the file linked out": ("open", r.OpenReq(ino["linked-out"])),
        "link back in of the file linked out": ("link", r.LinkReq(ino["linked-out"], ino["in"], b"back")),
        "setattr of the file linked out": ("setattr", r.SetattrReq(ino=ino["linked-out"], mode=0o666)),
        "open of the file in the directory moved out": ("open", r.OpenReq(ino["deep"])),
        "getattr of the directory moved out": ("getattr", r.InodeReq(ino["sub"])),
    }.items():
        response = as_spy(op, record)
        print(f"{what}: {response.status_code} {errno_of(response)}")
        assert response.status_code == 403 and errno_of(response) == "EACCES", (what, response.text)
    assert not (inside / "back").exists()
    assert stat.S_IMODE(os.stat(outside / "linked-out.txt").st_mode) != 0o666
    still = as_spy("open", r.OpenReq(ino["twice"]))
    assert still.status_code == 200, still.text
    # the export's own hard links and removes inside keep its files reachable
    assert as_spy("link", r.LinkReq(ino["shown"], ino["in"], b"shown-too.txt")).status_code == 200
    assert as_spy("remove", r.RemoveReq(ino["in"], b"shown.txt", False)).status_code == 200
    assert as_spy("getattr", r.InodeReq(ino["shown"])).json()["nlink"] == 1
    wait_until(lambda: (inside / "shown-too.txt").exists(), 30, "the export's own link seen by another client")
    assert (inside / "shown-too.txt").read_text() == "shown.txt"


def test_health_is_open_and_the_status_page_loopback_only_by_default(secured):
    c = secured
    assert httpx.get(f"http://{c.metaserver}/health").status_code == 200
    assert httpx.get(f"http://{c.metaserver}/metrics").status_code == 200  # from loopback
    assert "secret" not in httpx.get(f"http://{c.metaserver}/").text.lower()


@contextlib.contextmanager
def loopback_capture(path: Path, ports: list[int]):
    """tcpdump on the loopback of the TCP traffic to and from `ports`, written to `path` until the
    block ends (each packet whole, written as it comes)."""
    if shutil.which("tcpdump") is None or os.geteuid() != 0:
        pytest.skip("tcpdump as root is needed to capture the loopback")
    log = path.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-B", "32768", "-s", "0", "-w", str(path), "tcp and ("
                                 + " or ".join(f"port {port}" for port in ports) + ")"], stdout=out, stderr=out)
    try:
        wait_until(lambda: b"listening on" in log.read_bytes() or proc.poll() is not None, 30, "tcpdump listening")
        assert proc.poll() is None, log.read_text()
        yield path
    finally:
        proc.terminate()
        proc.wait(30)


def file_chunks(c: Cluster, path: Path) -> list[dict]:
    return json.loads(chunkfs("info", path, "--dir", c.dir, "--json").stdout)["chunks"]


@pytest.mark.parametrize("fresh_cluster", [{"chunkservers": 2, "goal": 2, "gateway": True,
                                            "up_options": ("--tls", "--roles")}], indirect=True)
def test_tls_on_every_link_refuses_plain_http(fresh_cluster, tmp_path):
    """Every listener of a cluster run with `--tls` serves TLS only: the metaserver, the
    chunkservers, a standby following the metaserver (and the copy it takes), `chunkfs backup`'s
    download, and the gateway's S3 and REST doors (with the cluster's gateway certificate)."""
    c = fresh_cluster
    tls_dir = c.dir / "tls"
    data = os.urandom(3 << 20) + b"PLAINTEXT-MARKER-" * 1000
    servers = [s["address"] for s in c.status()["servers"]]
    assert len(servers) == 2 and all(s["alive"] for s in c.status()["servers"])
    # what travels on the loopback between the parts while a file is written (to both
    # chunkservers), and while a third copy of a goal-1 file is made chunkserver to chunkserver
    ports = sorted({int(address.rsplit(":", 1)[1]) for address in [c.metaserver, *servers]})
    with loopback_capture(tmp_path / "tls.pcap", ports) as pcap:
        (c.mnt / "over-tls.bin").write_bytes(data)
        (c.mnt / "one-copy").mkdir()
        chunkfs("goal", c.mnt / "one-copy", "1", "--dir", c.dir)
        # other bytes: the same content would be shared with over-tls.bin (dedup), at its goal 2
        (c.mnt / "one-copy" / "copied.bin").write_bytes(os.urandom(3 << 20) + b"PLAINTEXT-MARKER-" * 1000)
        assert {len(chunk["replicas"]) for chunk in file_chunks(c, c.mnt / "one-copy" / "copied.bin")} == {1}
        chunkfs("goal", c.mnt / "one-copy" / "copied.bin", "2", "--dir", c.dir)
        wait_until(lambda: {len(chunk["replicas"]) for chunk in file_chunks(c, c.mnt / "one-copy" / "copied.bin")}
                   == {2}, 60, "the second copies made, chunkserver to chunkserver")
    captured = pcap.read_bytes()
    print(f"captured {len(captured)} bytes on the cluster's ports: {captured.count(b'PLAINTEXT-MARKER-')} markers, "
          f"{captured.count(b'X-Chunkfs')} X-Chunkfs, {captured.count(b'POST /v1')} POST /v1")
    assert len(captured) > 2 * len(data)  # the control: three uploads and a copy went through it, encrypted
    assert captured.count(b"PLAINTEXT-MARKER-") == 0 and b"X-Chunkfs" not in captured and b"POST /v1" not in captured
    context = TlsFiles(tls_dir, "admin").client_context()
    for address in [c.metaserver, *servers]:
        with pytest.raises(httpx.HTTPError):  # plain HTTP: the handshake fails, no answer
            httpx.get(f"http://{address}/health", timeout=5)
        with pytest.raises(httpx.HTTPError):  # TLS without a certificate of the cluster CA
            httpx.get(f"https://{address}/health", verify=ssl.create_default_context(cafile=tls_dir / "ca.pem"),
                      timeout=5)
        assert httpx.get(f"https://{address}/health", verify=context, timeout=5).status_code == 200
    with another_mount(c, tmp_path / "second", f"tls_dir={tls_dir}") as second:
        assert (second / "over-tls.bin").read_bytes() == data
    # the gateway's doors: HTTPS with a certificate of the cluster CA; plain HTTP gets no answer
    gateway = json.loads(local_cluster_file(c.dir).read_text())["gateway"]
    ca_only = ssl.create_default_context(cafile=tls_dir / "ca.pem")  # an S3 client shows no certificate
    for url in (f"{gateway['rest']}/api/v1/health", gateway["s3"]):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{url}", timeout=5)
        assert httpx.get(f"https://{url}", verify=ca_only, timeout=5).status_code < 500
    # a backup's download and a standby's link to the metaserver
    chunkfs("backup", tmp_path / "over-tls.mdb.zst", "--dir", c.dir)
    assert (tmp_path / "over-tls.mdb.zst").stat().st_size > 0
    standby = f"127.0.0.1:{free_port_block(1)}"
    spawn(module_command("chunkfs.metaserver.main", "--follow", c.metaserver, "--listen", standby,
                         "--data-dir", str(tmp_path / "standby"), "--secret-file", str(c.secret_file),
                         "--tls-dir", str(tls_dir)), tmp_path / "standby.log", tmp_path / "standby.pid")
    try:
        wait_until(lambda: any(s["in_sync"] for s in c.status()["standbys"]), 60,
                   f"the standby in sync over TLS (its log: {tmp_path / 'standby.log'})")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{standby}/health", timeout=5)
        assert httpx.get(f"https://{standby}/health", verify=context, timeout=5).json()["role"] == "standby"
    finally:
        pid = read_pid(tmp_path / "standby.pid")
        if pid is not None:
            stop_pid(pid, timeout_s=10)



def test_status_access_signed_leaves_only_health_open(tmp_path):
    """A metaserver with `status_access = signed`: /health open, /metrics and / need an admin's
    (here the cluster secret's) signature; a client key is refused them."""
    port = free_port_block(1)
    secret_file = tmp_path / "secret"
    auth.create_secret(secret_file)
    address = f"127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "chunkfs.metaserver.main", "--listen", address,
                                "--data-dir", str(tmp_path / "meta"), "--secret-file", str(secret_file),
                                "--status-access", "signed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(f"http://{address}/health"), 30, "the metaserver answers /health")
        assert httpx.get(f"http://{address}/metrics").status_code == 401
        assert httpx.get(f"http://{address}/").status_code == 401
        secret = auth.load_secret(secret_file)
        assert call(address, secret, "GET", "/metrics").status_code == 200
        made = call(address, secret, "POST", "/v1/credentials/add", r.CredentialReq(role="client", name="c")).json()
        assert call(address, made["credential"].encode(), "GET", "/metrics").status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
