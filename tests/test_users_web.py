"""Users, logins and share links as people meet them: `chunkfs user ...` on the command line,
the REST API with httpx and curl against the gateway `chunkfs up` starts, each checked against
the FUSE mount of the same cluster (owners, modes), and every failure the issue lists: wrong
password, expired token, another user's file, a link past its expiry or count, a revoked link
and key, a path with `..`, a change without the CSRF token."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import zipfile

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chunkfs import auth
from chunkfs.gateway.tokens import TokenIssuer
from chunkfs.protocol.accounts import User
from conftest import CHUNKFS, _cluster, chunkfs, wait_until

MiB = 1 << 20
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22", "dave": "dave-password-333"}


def user_cli(cluster, *args: str, password: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHUNKFS, "user", *args, "--dir", str(cluster.dir), "--json"], input=password,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"chunkfs user {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def add_user(cluster, name: str, *args: str) -> dict:
    return json.loads(user_cli(cluster, "add", name, "--password-stdin", *args, password=PASSWORDS[name] + "\n").stdout)


@pytest.fixture(scope="module")
def web_cluster(tmp_path_factory):
    """A cluster as `make up` makes it: with its gateway (REST on the metaserver's port + 61)."""
    yield from _cluster(tmp_path_factory, gateway=True)


@pytest.fixture(scope="module")
def rest(web_cluster) -> str:
    return f"http://127.0.0.1:{web_cluster.port + 61}"


@pytest.fixture(scope="module")
def users(web_cluster) -> dict[str, dict]:
    return {name: add_user(web_cluster, name) for name in PASSWORDS}


def login(rest: str, name: str, password: str | None = None) -> httpx.Response:
    return httpx.post(f"{rest}/api/v1/auth/login", json={"name": name, "password": password or PASSWORDS[name]})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(rest, users) -> dict[str, str]:
    return {name: login(rest, name).json()["access_token"] for name in ("alice", "bob")}


def test_users_on_the_command_line_and_their_homes_on_the_mount(web_cluster, users):
    alice = users["alice"]
    assert alice["uid"] >= 1000 and alice["gid"] == alice["uid"] and alice["home"] == "/home/alice"
    assert "password_hash" not in alice and alice["can_log_in"]
    home = os.stat(web_cluster.mnt / "home" / "alice")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (alice["uid"], alice["gid"], 0o700)
    assert len({u["uid"] for u in users.values()}) == len(users)  # each its own uid
    listed = json.loads(user_cli(web_cluster, "list").stdout)
    assert {u["name"] for u in listed} >= {"alice", "bob"} and all("password_hash" not in u for u in listed)

    short = user_cli(web_cluster, "add", "eve", "--password-stdin", password="short\n", check=False)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    bad = user_cli(web_cluster, "add", "Eve!", "--password-stdin", password="long-enough-1\n", check=False)
    assert bad.returncode == 1 and "user name" in bad.stderr
    again = user_cli(web_cluster, "add", "alice", "--password-stdin", password="long-enough-1\n", check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    taken = user_cli(web_cluster, "add", "frank", "--uid", str(alice["uid"]), "--password-stdin",
                     password="long-enough-1\n", check=False)
    assert taken.returncode == 1 and "belongs to 'alice'" in taken.stderr


def test_passwd_disable_remove(web_cluster, rest, users):
    user_cli(web_cluster, "passwd", "dave", "--password-stdin", password="dave-new-password\n")
    assert login(rest, "dave").status_code == 401
    session = login(rest, "dave", "dave-new-password")
    assert session.status_code == 200
    token = session.json()["access_token"]
    assert httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(token)).json()["name"] == "dave"
    user_cli(web_cluster, "disable", "dave")
    assert login(rest, "dave", "dave-new-password").status_code == 401
    # the session ended with the disabling: its token is refused once the gateway asks again
    wait_until(lambda: httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(token)).status_code == 401, 30,
               "the disabled user's token is refused")
    user_cli(web_cluster, "disable", "dave", "--enable")
    assert login(rest, "dave", "dave-new-password").status_code == 200
    gone = json.loads(user_cli(web_cluster, "remove", "dave").stdout)
    assert gone == {"removed": "dave", "uid": users["dave"]["uid"]}
    assert login(rest, "dave", "dave-new-password").status_code == 401
    assert (web_cluster.mnt / "home" / "dave").is_dir()  # the files stay


def test_a_web_upload_is_owned_by_the_user_on_the_mount(web_cluster, rest, users, tokens):
    body = os.urandom(3 * MiB + 5)
    put = httpx.put(f"{rest}/api/v1/files/home/alice/report.bin", content=body, headers=bearer(tokens["alice"]))
    assert put.status_code == 201, put.text
    on_mount = web_cluster.mnt / "home/alice/report.bin"
    assert on_mount.read_bytes() == body
    st = os.stat(on_mount)
    assert (st.st_uid, st.st_gid) == (users["alice"]["uid"], users["alice"]["gid"])
    listing = httpx.get(f"{rest}/api/v1/files/home/alice?list", headers=bearer(tokens["alice"])).json()
    entry = next(e for e in listing["entries"] if e["name"] == "report.bin")
    assert (entry["size"], entry["uid"]) == (len(body), users["alice"]["uid"])
    # curl with the token, as a script would
    curl = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {tokens['alice']}",
                           f"{rest}/api/v1/files/home/alice/report.bin"], capture_output=True, timeout=60)
    assert curl.returncode == 0 and curl.stdout == body


def test_another_users_files_are_refused_and_not_listed(web_cluster, rest, users, tokens):
    httpx.put(f"{rest}/api/v1/files/home/alice/private.txt", content=b"alice only",
              headers=bearer(tokens["alice"])).raise_for_status()
    as_bob = bearer(tokens["bob"])
    listing = httpx.get(f"{rest}/api/v1/files/home/alice?list", headers=as_bob)
    assert listing.status_code == 403 and "private.txt" not in listing.text
    got = httpx.get(f"{rest}/api/v1/files/home/alice/private.txt", headers=as_bob)
    assert got.status_code == 403 and "alice only" not in got.text
    put = httpx.put(f"{rest}/api/v1/files/home/alice/from-bob.txt", content=b"x", headers=as_bob)
    assert put.status_code == 403
    share = httpx.post(f"{rest}/api/v1/shares", json={"path": "/home/alice/private.txt", "expires_in_s": 60},
                       headers=as_bob)
    assert share.status_code == 403
    assert not (web_cluster.mnt / "home/alice/from-bob.txt").exists()


def test_a_file_made_0600_on_the_mount_is_not_bobs_on_the_web_or_over_s3(web_cluster, rest, users, tokens):
    """Cross-door: alice's file, chmod 0600 on the mount, in a directory everyone may read."""
    shared = web_cluster.mnt / "team"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o777)
    secret = shared / "alice-secret.txt"
    secret.write_bytes(b"for alice's eyes")
    os.chown(secret, users["alice"]["uid"], users["alice"]["gid"])
    os.chmod(secret, 0o600)
    assert httpx.get(f"{rest}/api/v1/files/team/alice-secret.txt", headers=bearer(tokens["bob"])).status_code == 403
    alice_got = httpx.get(f"{rest}/api/v1/files/team/alice-secret.txt", headers=bearer(tokens["alice"]))
    assert alice_got.content == b"for alice's eyes"
    key = json.loads(chunkfs("gateway", "key", "add", "bob-s3", "--uid", users["bob"]["uid"], "--gid",
                             users["bob"]["gid"], "--dir", web_cluster.dir, "--json").stdout)
    assert key["access_key_id"] in user_cli(web_cluster, "keys", "bob").stdout
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{web_cluster.port + 60}",
                      aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"],
                      region_name="us-east-1", config=Config(retries={"max_attempts": 1}, signature_version="s3v4"))
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket="team", Key="alice-secret.txt")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # a removed key is refused from then on
    rest_with_key = httpx.get(f"{rest}/api/v1/stats", headers=bearer(f"{key['access_key_id']}:{key['secret_access_key']}"))
    assert rest_with_key.status_code == 200
    chunkfs("gateway", "key", "remove", "bob-s3", "--dir", web_cluster.dir)
    revoked = httpx.get(f"{rest}/api/v1/stats", headers=bearer(f"{key['access_key_id']}:{key['secret_access_key']}"))
    assert revoked.status_code == 401


def test_wrong_password_expired_token_refresh_and_logout(web_cluster, rest, users):
    wrong = login(rest, "bob", "not-bobs-password")
    assert wrong.status_code == 401 and wrong.json()["error"] == "LoginFailed"
    nobody = login(rest, "nosuchuser", "whatever-password")
    assert nobody.status_code == 401 and nobody.json()["message"] == wrong.json()["message"]
    assert httpx.get(f"{rest}/api/v1/stats", headers=bearer("not.a.token")).status_code == 401

    tokens = login(rest, "bob").json()
    assert tokens["token_type"] == "Bearer" and 0 < tokens["expires_in"] <= 900
    issuer = TokenIssuer(auth.load_secret(web_cluster.secret_file))
    session_id = tokens["refresh_token"].partition(".")[0]
    expired, _ = issuer.access_token(User(name="bob", uid=users["bob"]["uid"], gid=users["bob"]["gid"],
                                          home="/home/bob"), session_id, ttl_s=-60)
    answer = httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(expired))
    assert answer.status_code == 401 and "expired" in answer.json()["message"]
    forged = TokenIssuer(b"another cluster's secret").access_token(
        User(name="bob", uid=0, gid=0, home="/"), session_id)[0]
    assert httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(forged)).status_code == 401

    renewed = httpx.post(f"{rest}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert renewed.status_code == 200
    new = renewed.json()
    assert httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(new["access_token"])).json()["uid"] == users["bob"]["uid"]
    spent = httpx.post(f"{rest}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert spent.status_code == 401  # a refresh token works once

    assert httpx.post(f"{rest}/api/v1/auth/logout", headers=bearer(new["access_token"])).status_code == 204
    assert httpx.get(f"{rest}/api/v1/auth/me", headers=bearer(new["access_token"])).status_code == 401
    assert httpx.post(f"{rest}/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]}).status_code == 401


def test_failed_logins_are_slowed_per_user(web_cluster, rest, users):
    add_failures = [login(rest, "alice", f"wrong-{i}-password").status_code for i in range(5)]
    assert add_failures == [401] * 5
    throttled = login(rest, "alice")  # even the right password waits now
    assert throttled.status_code == 429 and "try again" in throttled.json()["message"]
    wait_until(lambda: login(rest, "alice").status_code == 200, 30, "alice may try again after the delay")


def test_cookie_changes_need_the_csrf_token(web_cluster, rest, users):
    with httpx.Client(base_url=rest) as browser:
        logged_in = browser.post("/api/v1/auth/login", json={"name": "bob", "password": PASSWORDS["bob"]})
        assert logged_in.status_code == 200
        cookies = [c.lower() for c in logged_in.headers.get_list("set-cookie")]
        assert all("httponly" in c and "samesite=strict" in c for c in cookies) and len(cookies) == 2
        assert browser.get("/api/v1/files/home/bob?list").status_code == 200  # a read needs no token
        forged = browser.post("/api/v1/dirs/home/bob/made-by-a-forged-form")
        assert forged.status_code == 403 and forged.json()["error"] == "CsrfTokenMissing"
        assert not (web_cluster.mnt / "home/bob/made-by-a-forged-form").exists()
        csrf = browser.get("/api/v1/auth/me").json()["csrf_token"]
        made = browser.post("/api/v1/dirs/home/bob/made-by-the-page", headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201
        assert (web_cluster.mnt / "home/bob/made-by-the-page").is_dir()
        moved = browser.post("/api/v1/move", json={"from": "/home/bob/made-by-the-page", "to": "/home/bob/renamed"},
                             headers={"X-CSRF-Token": csrf})
        assert moved.status_code == 200 and (web_cluster.mnt / "home/bob/renamed").is_dir()
    page = httpx.get(f"{rest}/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]


def test_paths_with_dot_dot(web_cluster, rest, users, tokens):
    above = httpx.get(f"{rest}/api/v1/files/..%2F..%2Fetc", headers=bearer(tokens["bob"]))
    assert above.status_code in (400, 404)
    escaping = httpx.post(f"{rest}/api/v1/move", headers=bearer(tokens["bob"]),
                          json={"from": "/home/bob/../../home/alice/report.bin", "to": "/home/bob/stolen.bin"})
    assert escaping.status_code == 403  # lexically /home/alice/report.bin: alice's, refused
    httpx.put(f"{rest}/api/v1/files/home/bob/folder/inner.txt", content=b"inner",
              headers=bearer(tokens["bob"])).raise_for_status()
    link = httpx.post(f"{rest}/api/v1/shares", json={"path": "/home/bob/folder", "expires_in_s": 600},
                      headers=bearer(tokens["bob"])).json()["url"]
    assert httpx.get(f"{link}/inner.txt").content == b"inner"
    assert httpx.get(f"{link}/..%2F..%2Falice%2Freport.bin").status_code == 400
    assert httpx.get(f"{link}/../other").status_code in (400, 404)  # httpx normalises the URL itself


def share(rest: str, token: str, path: str, **options) -> dict:
    made = httpx.post(f"{rest}/api/v1/shares", json={"path": path, **options}, headers=bearer(token))
    assert made.status_code == 201, made.text
    return made.json()


def test_share_links(web_cluster, rest, users, tokens):
    body = os.urandom(5 * MiB + 3)
    httpx.put(f"{rest}/api/v1/files/home/alice/film.bin", content=body, headers=bearer(tokens["alice"])).raise_for_status()
    link = share(rest, tokens["alice"], "/home/alice/film.bin", expires_in_s=3600)
    assert link["url"].startswith(f"{rest}/s/") and link["owner"] == "alice"
    curl = subprocess.run(["curl", "-sf", link["url"]], capture_output=True, timeout=60)  # no login
    assert curl.returncode == 0 and curl.stdout == body
    ranged = httpx.get(link["url"], headers={"Range": "bytes=4194300-4194310"})
    assert ranged.status_code == 206 and ranged.content == body[4194300:4194311]
    resumed = subprocess.run(["curl", "-sf", "-C", str(len(body) - 100), link["url"]], capture_output=True, timeout=60)
    assert resumed.stdout == body[-100:]
    listed = httpx.get(f"{rest}/api/v1/shares", headers=bearer(tokens["alice"])).json()["shares"]
    mine = next(s for s in listed if s["id"] == link["id"])
    assert mine["downloads"] == 1  # the curl from byte 0 counted; the ranges did not
    assert link["id"] not in httpx.get(f"{rest}/api/v1/shares", headers=bearer(tokens["bob"])).text
    assert httpx.delete(f"{rest}/api/v1/shares/{link['id']}", headers=bearer(tokens["bob"])).status_code == 404

    assert httpx.delete(f"{rest}/api/v1/shares/{link['id']}", headers=bearer(tokens["alice"])).status_code == 200
    revoked = httpx.get(link["url"])
    assert revoked.status_code == 410 and "revoked" in revoked.text
    assert httpx.get(f"{rest}/s/{'x' * 43}").status_code == 404

    counted = share(rest, tokens["alice"], "/home/alice/film.bin", expires_in_s=3600, max_downloads=2)
    assert [httpx.get(counted["url"]).status_code for _ in range(3)] == [200, 200, 410]
    assert "used up" in httpx.get(counted["url"]).text

    short = share(rest, tokens["alice"], "/home/alice/film.bin", expires_in_s=5)
    assert httpx.head(short["url"]).status_code == 200
    wait_until(lambda: httpx.get(short["url"]).status_code == 410, 30, "the 5-second link expires")
    assert "expired" in httpx.get(short["url"]).text

    protected = share(rest, tokens["alice"], "/home/alice/film.bin", expires_in_s=600, password="open sesame")
    assert httpx.get(protected["url"]).status_code == 401
    assert httpx.get(protected["url"], auth=("", "wrong")).status_code == 401
    assert httpx.get(protected["url"], auth=("", "open sesame")).content == body
    with httpx.Client() as browser:
        form = browser.post(protected["url"], data={"password": "open sesame"})
        assert form.status_code == 303
        assert browser.get(protected["url"]).content == body  # the pass cookie from the form

    gone = share(rest, tokens["alice"], "/home/alice/film.bin", expires_in_s=600)
    (web_cluster.mnt / "home/alice/film.bin").unlink()
    wait_until(lambda: httpx.get(gone["url"]).status_code == 410, 30, "the link of a removed file is gone")


def test_a_shared_folder_lists_and_zips(web_cluster, rest, users, tokens):
    files = {"a.txt": b"first", "sub/b.bin": os.urandom(MiB + 1)}
    for name, data in files.items():
        httpx.put(f"{rest}/api/v1/files/home/alice/album/{name}", content=data,
                  headers=bearer(tokens["alice"])).raise_for_status()
    link = share(rest, tokens["alice"], "/home/alice/album", expires_in_s=600)
    page = httpx.get(link["url"])
    assert page.status_code == 200 and "a.txt" in page.text and "sub/" in page.text
    assert httpx.get(f"{link['url']}/sub/b.bin").content == files["sub/b.bin"]
    archive = httpx.get(f"{link['url']}?zip")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert {n: z.read(n) for n in z.namelist() if not n.endswith("/")} == files


def test_users_and_links_survive_a_metaserver_restart(web_cluster, rest, users, tokens):
    httpx.put(f"{rest}/api/v1/files/home/bob/kept.txt", content=b"kept", headers=bearer(tokens["bob"])).raise_for_status()
    link = share(rest, tokens["bob"], "/home/bob/kept.txt", expires_in_s=3600)
    web_cluster.kill("metaserver", 15)
    web_cluster.up()  # starts what is not running: the metaserver
    assert {u["name"] for u in json.loads(user_cli(web_cluster, "list").stdout)} >= {"alice", "bob"}
    wait_until(lambda: httpx.get(link["url"]).status_code == 200, 60, "the link answers after the restart")
    assert httpx.get(link["url"]).content == b"kept"
    assert login(rest, "bob").status_code == 200


def test_share_command_line(web_cluster, rest, users):
    made = json.loads(chunkfs("share", "/home/bob/kept-cli.txt", "--dir", web_cluster.dir, "--json", check=False).stdout
                      or "{}")
    assert made == {}  # no such file: nothing made
    (web_cluster.mnt / "home/bob/kept-cli.txt").write_bytes(b"from the cli")
    made = json.loads(chunkfs("share", "/home/bob/kept-cli.txt", "--expires", "10m", "--user", "bob",
                              "--dir", web_cluster.dir, "--json").stdout)
    assert made["url"].startswith(f"{rest}/s/") and made["owner"] == "bob"
    assert httpx.get(made["url"]).content == b"from the cli"
    listed = json.loads(chunkfs("share", "list", "--dir", web_cluster.dir, "--json").stdout)
    assert made["id"] in [s["id"] for s in listed] and all("password_hash" not in s for s in listed)
    chunkfs("share", "revoke", made["id"], "--dir", web_cluster.dir)
    assert httpx.get(made["url"]).status_code == 410
