"""Request signatures (chunkfs.auth): a signature is good for one request, once.

Units first (signing, the replay guard, log escaping, a client's retries), then a real cluster:
a signature taken from a request and reused with another body, host, chunkfs header, path or
query is refused 401 and changes nothing; the same request again is refused as a replay; a retry
under the same request id (signed anew) still gets the reply log's answer."""

from __future__ import annotations

import json
import os
import secrets
import time

import pytest
import trio

from chunkfs import auth, request_id
from chunkfs.log_lines import printable
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.transport import Response, TransportFailure
from signed_requests import replaced, send, sign_headers

SECRET = b"s" * 32
HOST = "127.0.0.1:9520"


# ---- units ----------------------------------------------------------------------------------

def verified(header: str, method="POST", target="/v1/fs/setattr", host=HOST, headers=(), body=b"{}",
             verifier: auth.Verifier | None = None) -> bool:
    verifier = verifier or auth.Verifier(SECRET)
    signed = verifier.check_head(method, target, host, list(headers), header)
    if signed is None:
        return False
    if signed.digest != auth.CHECKSUMMED and not signed.body_matches(body):
        return False
    return verifier.first_use(signed)


def test_a_signature_covers_every_part_of_the_request():
    headers = [("X-Chunkfs-Client", "c1"), (request_id.HEADER, "abc")]
    header = auth.sign(SECRET, "POST", "/v1/fs/setattr?x=1", HOST, headers, b"{}")
    assert verified(header, target="/v1/fs/setattr?x=1", headers=headers)
    changed = [
        dict(method="PUT"), dict(target="/v1/fs/remove?x=1"), dict(target="/v1/fs/setattr?x=2"),
        dict(target="/v1/fs/setattr"), dict(host="127.0.0.1:9521"), dict(body=b"{ }"),
        dict(headers=[("X-Chunkfs-Client", "c2"), (request_id.HEADER, "abc")]),
        dict(headers=[("X-Chunkfs-Client", "c1"), (request_id.HEADER, "abd")]),
        dict(headers=[*headers, ("X-Chunkfs-Attempt", "2")]),
        dict(headers=[*headers, ("X-Chunkfs-Client", "c1")]),  # a header twice
    ]
    for change in changed:
        request = {"target": "/v1/fs/setattr?x=1", "headers": headers, **change}
        assert not verified(header, **request), change
    # names are compared lower-cased and in any order; headers outside the signed set are free
    assert verified(header, target="/v1/fs/setattr?x=1", host=HOST.upper(),
                    headers=[(request_id.HEADER.lower(), "abc"), ("x-chunkfs-client", "c1"), ("Accept", "*/*")])


def test_a_signature_is_refused_with_another_secret_too_old_or_malformed():
    header = auth.sign(SECRET, "GET", "/x", HOST)
    assert not verified(header, method="GET", target="/x", body=b"", verifier=auth.Verifier(b"t" * 32))
    old = auth.sign(SECRET, "GET", "/x", HOST, now=1000)
    since_0 = auth.Verifier(SECRET, auth.ReplayGuard(started_at=0))
    assert not since_0.check_head("GET", "/x", HOST, [], old, now=1000 + auth.MAX_SKEW_S + 1)
    assert since_0.check_head("GET", "/x", HOST, [], old, now=1000 + auth.MAX_SKEW_S)
    # a server started after it was signed never saw its nonce: asked for it again, never taken
    later = auth.Verifier(SECRET, auth.ReplayGuard(started_at=1001))
    signed = later.check_head("GET", "/x", HOST, [], old, now=1002)
    assert signed is not None and later.too_early(signed) and not later.first_use(signed, now=1002)
    same_second = auth.Verifier(SECRET, auth.ReplayGuard(started_at=1000))
    signed = same_second.check_head("GET", "/x", HOST, [], old, now=1002)
    assert signed is not None and not same_second.too_early(signed) and same_second.first_use(signed, now=1002)
    for bad in (None, "", "garbage", header + "0", header.replace(".", "", 1), "1.2.3.4"):
        assert not verified(bad, method="GET", target="/x", body=b"")


def test_a_nonce_is_accepted_once_and_each_signing_takes_a_new_one():
    verifier = auth.Verifier(SECRET)
    header = auth.sign(SECRET, "POST", "/v1/fs/setattr", HOST, body=b"{}")
    assert verified(header, verifier=verifier)
    assert not verified(header, verifier=verifier)
    again = auth.sign(SECRET, "POST", "/v1/fs/setattr", HOST, body=b"{}")
    assert again.split(".")[1] != header.split(".")[1]
    assert len(again.split(".")[1]) * 4 >= 96
    assert verified(again, verifier=verifier)


def test_a_body_swapped_under_a_signature_does_not_use_up_its_nonce():
    verifier = auth.Verifier(SECRET)
    header = auth.sign(SECRET, "POST", "/v1/fs/setattr", HOST, body=b'{"ino":2}')
    assert not verified(header, body=b'{"ino":3}', verifier=verifier)
    assert verified(header, body=b'{"ino":2}', verifier=verifier)


def test_a_chunk_put_is_bound_by_its_signed_checksum_header():
    headers = [(auth.CHECKSUM_HEADER, "aa" * 16)]
    header = auth.sign(SECRET, "PUT", "/v1/chunks/1/1", HOST, headers, b"data")
    assert header.split(".")[2] == auth.CHECKSUMMED
    assert verified(header, method="PUT", target="/v1/chunks/1/1", headers=headers)
    header = auth.sign(SECRET, "PUT", "/v1/chunks/1/1", HOST, headers, b"data")
    assert not verified(header, method="PUT", target="/v1/chunks/1/1", headers=[(auth.CHECKSUM_HEADER, "bb" * 16)])
    # without the header, or on another method, the body itself is hashed
    assert auth.body_digest("PUT", [], b"data") == auth.body_digest("POST", headers, b"data") != auth.CHECKSUMMED


def test_the_replay_guard_forgets_after_the_window_and_stays_within_its_bound():
    guard = auth.ReplayGuard(max_nonces=100, skew_s=10, started_at=0)
    now = 1_000_000.0
    assert guard.first_use("n0", int(now), now)
    assert not guard.first_use("n0", int(now), now + 5)
    assert guard.first_use("n1", int(now) + 30, now + 30)  # n0 forgotten: its time refuses it now
    assert len(guard) == 1
    assert not guard.first_use("n0", int(now), now + 30)
    for i in range(2, 250):
        assert guard.first_use(f"n{i}", int(now) + 30 + i // 50, now + 30)
    assert len(guard) == 100
    # every nonce dropped to stay within the bound is still refused: its time is at or below the floor
    assert guard.floor_ts >= int(now) + 30 + 149 // 50
    assert not guard.first_use("n1", int(now) + 30, now + 31)
    assert not guard.first_use("n2", int(now) + 30, now + 31)


def test_log_lines_escape_what_requests_carry():
    assert printable("/x\n2026-01-01 INFO forged\r\x1b[31m\u2028\udce9") == \
        "/x\\x0a2026-01-01 INFO forged\\x0d\\x1b[31m\\u2028\\udce9"
    assert printable("/v1/fs/lookup") == "/v1/fs/lookup"


def test_a_retried_call_keeps_its_request_id_and_signs_each_attempt_anew():
    sent: list[dict[str, str]] = []

    class FlakyTransport:
        async def send(self, method, address, target, headers, body, timeout_s=None):
            sent.append(dict(headers))
            if len(sent) == 1:
                raise TransportFailure("reset after the server got it")
            return Response(200, b"null")

        async def aclose(self):
            pass

    async def call():
        http = SignedHttp(SECRET, retry_s=5)
        http.transport = FlakyTransport()
        await http.request("POST", f"http://{HOST}/v1/fs/setattr", content=b"{}",
                           headers={"X-Chunkfs-Client": "c1"})

    verifier = auth.Verifier(SECRET)  # up before the call, as a server is: it refuses what was signed before it started
    trio.run(call)
    assert len(sent) == 2
    assert sent[0][request_id.HEADER] == sent[1][request_id.HEADER]
    assert [s["X-Chunkfs-Attempt"] for s in sent] == ["1", "2"]
    nonces = [s[auth.HEADER].split(".")[1] for s in sent]
    assert nonces[0] != nonces[1]
    for headers in sent:
        signed = verifier.check_head("POST", "/v1/fs/setattr", headers["Host"], headers.items(), headers[auth.HEADER])
        assert signed is not None and signed.body_matches(b"{}") and verifier.first_use(signed)


# ---- a real cluster -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secret(cluster) -> bytes:
    return auth.load_secret(cluster.secret_file)


def fs_call(cluster, secret, op: str, req, client: str = "sig-test", rid: str | None = None,
            attempt: str | None = None) -> tuple[int, bytes]:
    body = r.json_encode(req)
    extra = [("X-Chunkfs-Client", client), (request_id.HEADER, rid or request_id.new())]
    if attempt:
        extra.append(("X-Chunkfs-Attempt", attempt))
    target = f"/v1/fs/{op}"
    return send(cluster.metaserver, "POST", target,
                sign_headers(secret, cluster.metaserver, "POST", target, body, tuple(extra)), body)


def attr_of(cluster, secret, ino: int) -> dict:
    status, body = fs_call(cluster, secret, "getattr", r.InodeReq(ino))
    assert status == 200, body
    return json.loads(body)


def make_file(cluster, name: str, data: bytes) -> int:
    path = cluster.mnt / name
    path.write_bytes(data)
    return os.stat(path).st_ino


def forgeries(headers, body: bytes, target: str, other_body: bytes, host: str):
    """The ways a captured signature was reused: (what changed, target, headers, body)."""
    yield "body", target, headers, other_body
    yield "host", target, replaced(headers, "Host", host), body
    yield "chunkfs header", target, replaced(headers, "X-Chunkfs-Client", "someone-else"), body
    yield "added chunkfs header", target, [*headers, ("X-Chunkfs-Attempt", "1")], body
    other_id = [(n, v) for n, v in headers if n != request_id.HEADER] + [(request_id.HEADER, "feedfacefeed")]
    yield "request id", target, other_id, body
    yield "query", target + "?goal=1", headers, body


def test_a_setattr_signature_reused_with_another_body_host_header_or_path_changes_nothing(cluster, secret):
    harmless = make_file(cluster, "sig-harmless", b"harmless")
    victim = make_file(cluster, "sig-victim", b"victim data")
    before = attr_of(cluster, secret, victim)
    target, body = "/v1/fs/setattr", r.json_encode(r.SetattrReq(ino=harmless, mode=0o640))
    headers = sign_headers(secret, cluster.metaserver, "POST", target, body,
                           (("X-Chunkfs-Client", "sig-test"), (request_id.HEADER, request_id.new())))
    attack = r.json_encode(r.SetattrReq(ino=victim, size=0, mode=0o4777, uid=4242))
    for what, forged_target, forged_headers, forged_body in [
            *forgeries(headers, body, target, attack, f"localhost:{cluster.port}"),
            ("path", "/v1/fs/getattr", headers, body)]:
        status, reply = send(cluster.metaserver, "POST", forged_target, forged_headers, forged_body)
        assert status == 401, (what, reply)
    assert attr_of(cluster, secret, victim) == before
    assert (cluster.mnt / "sig-victim").read_bytes() == b"victim data"
    status, reply = send(cluster.metaserver, "POST", target, headers, body)  # the genuine request, once
    assert status == 200, reply
    assert json.loads(reply)["mode"] & 0o7777 == 0o640
    assert send(cluster.metaserver, "POST", target, headers, body)[0] == 401  # and not twice


def test_a_remove_signature_reused_for_another_name_changes_nothing(cluster, secret):
    make_file(cluster, "sig-decoy", b"decoy")
    make_file(cluster, "sig-keep", b"keep")
    target = "/v1/fs/remove"
    body = r.json_encode(r.RemoveReq(1, b"sig-decoy", False))
    headers = sign_headers(secret, cluster.metaserver, "POST", target, body, (("X-Chunkfs-Client", "sig-test"),))
    for what, forged_target, forged_headers, forged_body in forgeries(
            headers, body, target, r.json_encode(r.RemoveReq(1, b"sig-keep", False)), f"localhost:{cluster.port}"):
        assert send(cluster.metaserver, "POST", forged_target, forged_headers, forged_body)[0] == 401, what
    assert (cluster.mnt / "sig-keep").read_bytes() == b"keep"
    assert send(cluster.metaserver, "POST", target, headers, body)[0] == 200
    assert send(cluster.metaserver, "POST", target, headers, body)[0] == 401
    assert (cluster.mnt / "sig-keep").read_bytes() == b"keep"


def chunk_of(cluster, secret, ino: int) -> tuple[r.ChunkRef, dict[str, str]]:
    status, body = fs_call(cluster, secret, "open", r.InodeReq(ino))
    assert status == 200, body
    layout = r.json_decode(body, type=r.FileLayout)
    return layout.chunks[0], layout.servers


def test_a_chunk_put_or_delete_signature_reused_elsewhere_changes_no_replica(cluster, secret):
    from chunkfs.checksum import chunk_checksum
    data = secrets.token_bytes(1 << 20)
    ino = make_file(cluster, "sig-chunked", data)
    ref, servers = chunk_of(cluster, secret, ino)
    holder, *others = [servers[s] for s in ref.replicas]
    target = f"/v1/chunks/{ref.chunk_id}/{ref.version}"
    junk = secrets.token_bytes(len(data))
    # a PUT of the chunk as its writer sent it, reused with junk (its checksum, or the original one)
    put = sign_headers(secret, holder, "PUT", target, data, ((auth.CHECKSUM_HEADER, ref.checksum),))
    assert send(holder, "PUT", target, replaced(put, auth.CHECKSUM_HEADER, chunk_checksum(junk)), junk)[0] == 401
    for other in others:  # the same request at another replica's server
        assert send(other, "PUT", target, put, junk)[0] == 401
    status, reply = send(holder, "PUT", target, put, junk)  # bytes that do not match the signed checksum
    assert status == 400 and json.loads(reply)["errno"] == "EBADMSG", reply
    # a partial write (a new version from this one) whose piece does not match its signed checksum
    newer = f"/v1/chunks/{ref.chunk_id}/{ref.version + 1}"
    patch = f"{newer}?base_version={ref.version}&offset=0"
    signed_patch = sign_headers(secret, holder, "PUT", patch, b"x" * 100, ((auth.CHECKSUM_HEADER, chunk_checksum(b"x" * 100)),))
    status, reply = send(holder, "PUT", patch, signed_patch, b"y" * 100)
    assert status == 400 and json.loads(reply)["errno"] == "EBADMSG", reply
    assert send(holder, "GET", newer, sign_headers(secret, holder, "GET", newer))[0] == 404
    # a DELETE signed for another version, or for one server, used at another
    other_version = f"/v1/chunks/{ref.chunk_id}/{ref.version + 1000}"
    delete = sign_headers(secret, holder, "DELETE", other_version)
    assert send(holder, "DELETE", target, delete)[0] == 401
    for other in others:
        assert send(other, "DELETE", other_version, delete)[0] == 401
    for address in (holder, *others):
        status, stored = send(address, "GET", target, sign_headers(secret, address, "GET", target))
        assert status == 200 and stored == data
    assert (cluster.mnt / "sig-chunked").read_bytes() == data


def test_a_backup_signature_downloads_once(cluster, secret):
    target = "/v1/backup"
    headers = sign_headers(secret, cluster.metaserver, "GET", target)
    assert send(cluster.metaserver, "GET", target, replaced(headers, "Host", f"localhost:{cluster.port}"))[0] == 401
    status, copy = send(cluster.metaserver, "GET", target, headers)
    assert status == 200 and len(copy) > 0
    status, reply = send(cluster.metaserver, "GET", target, headers)
    assert status == 401 and b"used before" in reply


def test_a_retry_signed_anew_under_the_same_request_id_gets_the_reply_logs_answer(cluster, secret):
    rid = request_id.new()
    create = r.CreateReq(parent=1, name=b"sig-retried", mode=0o100644, uid=0, gid=0)
    status, first = fs_call(cluster, secret, "create", create, rid=rid, attempt="1")
    assert status == 200, first
    status, again = fs_call(cluster, secret, "create", create, rid=rid, attempt="2")
    assert status == 200, again  # not EEXIST: the same answer, the create not run twice
    assert json.loads(again)["ino"] == json.loads(first)["ino"]
    status, other = fs_call(cluster, secret, "create", create, rid=request_id.new(), attempt="1")
    assert status == 409 and json.loads(other)["errno"] == "EEXIST"


def test_open_routes_answer_without_a_signature_and_show_no_secret(cluster, secret):
    for target in ("/", "/health", "/metrics"):
        status, page = send(cluster.metaserver, "GET", target, [("Host", cluster.metaserver)])
        assert status == 200, target
        assert secret not in page
    assert send(cluster.metaserver, "GET", "/v1/status", [("Host", cluster.metaserver)])[0] == 401


def test_a_restarted_metaserver_asks_again_for_requests_signed_before_it_started(fresh_cluster):
    import signal
    secret = auth.load_secret(fresh_cluster.secret_file)
    meta, target, body = fresh_cluster.metaserver, "/v1/fs/getattr", r.json_encode(r.InodeReq(1))
    # signed (a second back, so a restart within the second does not matter) and never sent
    captured = [("Host", meta), (auth.HEADER, auth.sign(secret, "POST", target, meta, [("Host", meta)], body,
                                                         now=time.time() - 1))]
    fresh_cluster.kill("metaserver", signal.SIGTERM)
    fresh_cluster.up()
    status, reply = send(meta, "POST", target, captured, body)
    assert status == 503 and json.loads(reply)["errno"] == "EAGAIN", reply  # a client signs again
    assert send(meta, "POST", target, sign_headers(secret, meta, "POST", target, body), body)[0] == 200
