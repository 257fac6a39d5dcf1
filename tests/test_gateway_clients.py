"""The gateway against clients nobody here wrote: rclone, s3cmd, the minio SDK, tuspy, boto3's
flexible checksums; and the upload sessions under them (multipart Complete moves the parts'
chunks, `chunkfs put` and `chunkfs put --url` resume). Each checks what the FUSE mount of the
same cluster shows."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import test_gateway
from conftest import chunkfs, free_port_block, metrics_of, wait_until
from test_gateway import _code, _tus, running_gateway

# the fixtures of test_gateway.py, for a cluster and gateway of this module's own
gateway_cluster, gateway, root_key, s3 = (test_gateway.gateway_cluster, test_gateway.gateway, test_gateway.root_key,
                                          test_gateway.s3)

MiB = 1 << 20
CHUNK = 4 * MiB
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _chunk_ids(path: Path) -> list[int]:
    return [c["chunk_id"] for c in json.loads(chunkfs("info", path, "--json").stdout)["chunks"]]


def _session_dir(mnt: Path, upload_id: str) -> Path:
    return mnt / ".chunkfs-uploads" / upload_id


def _tree(root: Path) -> dict[str, bytes]:
    """A small tree of files a sync must carry: empty, small, nested, one above rclone's
    multipart cut-off as the tests set it."""
    files = {"empty": b"", "a.txt": b"alpha\n", "dir/b.bin": os.urandom(70_000), "dir/sub/c.bin": os.urandom(6 * MiB + 5),
             "dir/sub/deeper/d.txt": b"d" * 1000, "spaced name.txt": b"spaces", "unicode-\u00e9t\u00e9.txt": b"utf-8"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_multipart_complete_moves_the_parts_chunks(gateway_cluster, s3):
    """Parts of whole chunks: the object's chunks are the parts' chunks (same ids, no copy).
    Parts of 5 MiB (not whole chunks) and a last part small enough to be inline are copied,
    and the bytes are right either way."""
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="linked")
    bodies = [os.urandom(8 * MiB), os.urandom(8 * MiB), os.urandom(3 * MiB + 7)]
    upload = s3.create_multipart_upload(Bucket="linked", Key="dir/object.bin")["UploadId"]
    etags = [s3.upload_part(Bucket="linked", Key="dir/object.bin", UploadId=upload, PartNumber=n, Body=body)["ETag"]
             for n, body in enumerate(bodies, start=1)]
    before = [cid for n in (1, 2, 3) for cid in _chunk_ids(_session_dir(mnt, upload) / f"part-{n:05d}")]
    assert len(before) == 5
    s3.complete_multipart_upload(Bucket="linked", Key="dir/object.bin", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    assert _chunk_ids(mnt / "linked/dir/object.bin") == before  # moved, not copied
    assert (mnt / "linked/dir/object.bin").read_bytes() == b"".join(bodies)
    assert s3.get_object(Bucket="linked", Key="dir/object.bin")["Body"].read() == b"".join(bodies)
    assert not _session_dir(mnt, upload).exists()

    for sizes in ([5 * MiB, 5 * MiB, 1], [8 * MiB, 100]):  # copied from the first unaligned part / inline tail
        bodies = [os.urandom(size) for size in sizes]
        upload = s3.create_multipart_upload(Bucket="linked", Key="copied")["UploadId"]
        etags = [s3.upload_part(Bucket="linked", Key="copied", UploadId=upload, PartNumber=n, Body=b)["ETag"]
                 for n, b in enumerate(bodies, start=1)]
        s3.complete_multipart_upload(Bucket="linked", Key="copied", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
        assert (mnt / "linked/copied").read_bytes() == b"".join(bodies)
        assert s3.head_object(Bucket="linked", Key="copied")["ETag"].endswith(f'-{len(sizes)}"')
    assert os.listdir(mnt / ".chunkfs-uploads") == []


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_flexible_checksums_are_verified_stored_and_returned(s3, algorithm):
    bucket = f"checksums-{algorithm.lower()}"
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(MiB + 3)
    s3.put_object(Bucket=bucket, Key=algorithm, Body=body, ChecksumAlgorithm=algorithm)
    head = s3.head_object(Bucket=bucket, Key=algorithm, ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"]
    got = s3.get_object(Bucket=bucket, Key=algorithm, ChecksumMode="ENABLED")  # boto3 checks it
    assert got["Body"].read() == body
    wrong = {"CRC32": "AAAAAA==", "CRC32C": "AAAAAA==", "CRC64NVME": "AAAAAAAAAAA=",
             "SHA1": base64.b64encode(b"\0" * 20).decode(), "SHA256": base64.b64encode(b"\0" * 32).decode()}
    assert _code(lambda: s3.put_object(Bucket=bucket, Key=f"bad-{algorithm}", Body=body,
                                       **{f"Checksum{algorithm}": wrong[algorithm]})) == "BadDigest"
    assert _code(lambda: s3.head_object(Bucket=bucket, Key=f"bad-{algorithm}")) == "404"


@pytest.mark.skipif(_tool("rclone") is None, reason="rclone is not installed")
def test_rclone_sync_both_ways(gateway_cluster, gateway, root_key, tmp_path):
    """rclone sync of a tree into a bucket (multipart for the large file), `rclone check`,
    `diff -r` against the mount; then changes made on the mount synced back out."""
    # without the machine's AWS_* settings (an AWS_CA_BUNDLE makes rclone's plain-HTTP client fail)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "RCLONE_CONFIG_CFS_TYPE": "s3", "RCLONE_CONFIG_CFS_PROVIDER": "Other",
           "RCLONE_CONFIG_CFS_ACCESS_KEY_ID": root_key["access_key_id"],
           "RCLONE_CONFIG_CFS_SECRET_ACCESS_KEY": root_key["secret_access_key"],
           "RCLONE_CONFIG_CFS_ENDPOINT": gateway.s3, "RCLONE_CONFIG_CFS_REGION": "us-east-1",
           "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}

    def rclone(*args: str) -> str:
        result = subprocess.run([_tool("rclone"), *args, "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    local = tmp_path / "tree"
    _tree(local)
    rclone("mkdir", "cfs:rclone")
    rclone("sync", str(local), "cfs:rclone")
    rclone("check", str(local), "cfs:rclone")
    diff = subprocess.run(["diff", "-r", str(local), str(gateway_cluster.mnt / "rclone")], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    (gateway_cluster.mnt / "rclone/dir/b.bin").unlink()
    (gateway_cluster.mnt / "rclone/made-on-the-mount.txt").write_bytes(b"from the mount")
    back = tmp_path / "back"
    rclone("sync", "cfs:rclone", str(back))
    diff = subprocess.run(["diff", "-r", str(back), str(gateway_cluster.mnt / "rclone")], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    rclone("sync", str(local), "cfs:rclone")  # and the original again: the mount follows
    assert not (gateway_cluster.mnt / "rclone/made-on-the-mount.txt").exists()
    assert (gateway_cluster.mnt / "rclone/dir/b.bin").read_bytes() == (local / "dir/b.bin").read_bytes()


@pytest.mark.skipif(_tool("s3cmd") is None, reason="s3cmd is not installed")
def test_s3cmd(gateway_cluster, gateway, root_key, tmp_path):
    host = gateway.s3.removeprefix("http://")
    config = tmp_path / "s3cfg"
    config.write_text(f"[default]\naccess_key = {root_key['access_key_id']}\nsecret_key = {root_key['secret_access_key']}\n"
                      f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
                      "bucket_location = us-east-1\n")

    def s3cmd(*args: str) -> str:
        result = subprocess.run([_tool("s3cmd"), "-c", str(config), *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB + 1))
    s3cmd("mb", "s3://s3cmd")
    s3cmd("put", "--multipart-chunk-size-mb=5", str(big), "s3://s3cmd/dir/big.bin")
    s3cmd("put", str(tmp_path / "s3cfg"), "s3://s3cmd/small")
    assert "s3://s3cmd/dir/big.bin" in s3cmd("ls", "-r", "s3://s3cmd")
    assert (gateway_cluster.mnt / "s3cmd/dir/big.bin").read_bytes() == big.read_bytes()
    s3cmd("get", "s3://s3cmd/dir/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    s3cmd("del", "s3://s3cmd/dir/big.bin")
    assert not (gateway_cluster.mnt / "s3cmd/dir").exists()
    s3cmd("del", "s3://s3cmd/small")
    s3cmd("rb", "s3://s3cmd")
    assert not (gateway_cluster.mnt / "s3cmd").exists()


def test_minio_sdk(gateway_cluster, gateway, root_key, tmp_path):
    minio = pytest.importorskip("minio")
    client = minio.Minio(gateway.s3.removeprefix("http://"), access_key=root_key["access_key_id"],
                         secret_key=root_key["secret_access_key"], secure=False, region="us-east-1")
    client.make_bucket("minio-sdk")
    assert client.bucket_exists("minio-sdk")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))
    client.fput_object("minio-sdk", "a/big.bin", str(big), part_size=5 * MiB)  # multipart
    client.put_object("minio-sdk", "a/small.txt", __import__("io").BytesIO(b"small"), 5,
                      metadata={"x-amz-meta-colour": "green"})
    assert (gateway_cluster.mnt / "minio-sdk/a/big.bin").read_bytes() == big.read_bytes()
    assert sorted(o.object_name for o in client.list_objects("minio-sdk", recursive=True)) == ["a/big.bin", "a/small.txt"]
    assert [o.object_name for o in client.list_objects("minio-sdk")] == ["a/"]
    stat = client.stat_object("minio-sdk", "a/small.txt")
    assert stat.size == 5 and stat.metadata.get("x-amz-meta-colour") == "green"
    response = client.get_object("minio-sdk", "a/big.bin", offset=MiB, length=100)
    assert response.read() == big.read_bytes()[MiB: MiB + 100]
    response.close()
    response.release_conn()
    url = client.presigned_get_object("minio-sdk", "a/small.txt")
    with urllib.request.urlopen(url, timeout=10) as got:
        assert got.read() == b"small"
    client.remove_object("minio-sdk", "a/small.txt")
    assert not (gateway_cluster.mnt / "minio-sdk/a/small.txt").exists()


def test_tuspy_upload_interrupted_and_resumed_with_checksums(gateway_cluster, gateway, tmp_path):
    tusclient = pytest.importorskip("tusclient.client")
    key = gateway.key("tuspy")
    data = os.urandom(5 * MiB + 11)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    client = tusclient.TusClient(f"{gateway.rest}/uploads/",
                                 headers={"Authorization": f"Bearer {key['access_key_id']}:{key['secret_access_key']}"})
    first = client.uploader(file_path=str(local), chunk_size=MiB, metadata={"path": "/tuspy/deep/up.bin"},
                            upload_checksum=True)
    first.upload(stop_at=2 * MiB)  # the client stops (as if killed) after two PATCHes
    assert first.offset == 2 * MiB
    assert not (gateway_cluster.mnt / "tuspy/deep/up.bin").exists()
    second = client.uploader(file_path=str(local), url=first.url, chunk_size=MiB, upload_checksum=True)
    assert second.offset == 2 * MiB  # asked the gateway where to go on from
    second.upload()
    assert (gateway_cluster.mnt / "tuspy/deep/up.bin").read_bytes() == data


def test_tus_checksum_and_expiration_extensions(gateway_cluster, tmp_path):
    """A PATCH whose Upload-Checksum does not hold is 460 and stores nothing; an unfinished
    upload says when it expires, and is Gone (then removed) after that (a gateway of its own
    with uploads expiring after 2 s)."""
    base = free_port_block(2)
    with running_gateway(gateway_cluster, tmp_path, base, base + 1, "--upload-expiry-s", "2") as gw:
        key = gw.key("tus-ext")
        options = _tus(gw, key, "OPTIONS", "/api/v1/uploads/")
        assert {"checksum", "expiration"} <= set(options.getheader("Tus-Extension").split(","))
        assert "crc32c" in options.getheader("Tus-Checksum-Algorithm").split(",")
        created = _tus(gw, key, "POST", "/api/v1/uploads/", Upload_Length="10",
                       Upload_Metadata=f"path {base64.b64encode(b'/tus-ext/f').decode()}")
        location = created.getheader("Location")
        assert created.getheader("Upload-Expires")
        sha1 = lambda b: "sha1 " + base64.b64encode(hashlib.sha1(b).digest()).decode()
        bad = _tus(gw, key, "PATCH", location, b"hello", Upload_Offset="0", Upload_Checksum=sha1(b"other"),
                   Content_Type="application/offset+octet-stream")
        assert bad.status == 460
        assert _tus(gw, key, "HEAD", location).getheader("Upload-Offset") == "0"
        good = _tus(gw, key, "PATCH", location, b"hello", Upload_Offset="0", Upload_Checksum=sha1(b"hello"),
                    Content_Type="application/offset+octet-stream")
        assert (good.status, good.getheader("Upload-Offset")) == (204, "5")
        assert _tus(gw, key, "PATCH", location, b"x", Upload_Offset="5", Upload_Checksum="nope AAAA",
                    Content_Type="application/offset+octet-stream").status == 400
        wait_until(lambda: _tus(gw, key, "HEAD", location).status in (404, 410), 30, "the upload expires")
        assert not (gateway_cluster.mnt / "tus-ext/f").exists()


def _put_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "chunkfs"), "put", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)


def test_chunkfs_put_killed_half_way_resumes(gateway_cluster, tmp_path):
    """A put of a large file killed after its first part: run again, it stores only the rest
    (the first part's chunks are the file's), and the file is whole and right."""
    mnt = gateway_cluster.mnt
    local = tmp_path / "large.bin"
    local.write_bytes(os.urandom(136 * MiB))  # parts of 64 MiB: 64 + 64 + 8
    where = ("--dir", str(gateway_cluster.dir))
    process = _put_process(str(local), "/resumed/", *where)
    try:
        uploads = mnt / ".chunkfs-uploads"
        wait_until(lambda: any(uploads.glob("put-*/part-00001")), 120, "the put stored its first part")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    [first_part] = list(uploads.glob("put-*/part-00001"))
    first_chunks = _chunk_ids(first_part)
    assert len(first_chunks) == 16
    assert not (mnt / "resumed/large.bin").exists()
    result = chunkfs("put", str(local), "/resumed/", *where, timeout=300)
    assert result.returncode == 0
    assert _chunk_ids(mnt / "resumed/large.bin")[:16] == first_chunks  # not sent again
    assert subprocess.run(["cmp", str(local), str(mnt / "resumed/large.bin")]).returncode == 0
    assert not list(uploads.glob("put-*"))


def test_chunkfs_put_through_the_gateway_resumes(gateway_cluster, gateway, tmp_path):
    """`chunkfs put --url` with only an access key: killed mid-way, run again, it goes on
    from the offset the gateway kept."""
    key = gateway.key("putter")
    local = tmp_path / "through.bin"
    # parts of 64 MiB (64 + 64 + 8): the upload's state stays while the first part is stored
    # however fast the gateway takes it; a file of one part could be done between two polls
    local.write_bytes(os.urandom(136 * MiB))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "CHUNKFS_GATEWAY_KEY": f"{key['access_key_id']}:{key['secret_access_key']}"}
    url = gateway.rest.removesuffix("/api/v1")
    process = _put_process("--url", url, str(local), "/via-url/through.bin", env=env)
    state = tmp_path / "cache/chunkfs/http-puts.json"

    def offset() -> int:
        if not state.exists() or not json.loads(state.read_text() or "{}"):
            return 0
        [location] = json.loads(state.read_text()).values()
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("HEAD", location, headers={"Tus-Resumable": "1.0.0",
                                                "Authorization": f"Bearer {env['CHUNKFS_GATEWAY_KEY']}"})
        response = conn.getresponse()
        conn.close()
        return int(response.getheader("Upload-Offset") or 0)
    try:
        wait_until(lambda: offset() >= 8 * MiB, 120, "part of the file went through the gateway")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert not (gateway_cluster.mnt / "via-url/through.bin").exists()
    result = subprocess.run([str(VENV_BIN / "chunkfs"), "put", "--url", url, str(local), "/via-url/through.bin",
                             "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [copied] = json.loads(result.stdout)["copied"]
    assert copied["resumed_from"] >= 8 * MiB
    assert subprocess.run(["cmp", str(local), str(gateway_cluster.mnt / "via-url/through.bin")]).returncode == 0
    wrong = subprocess.run([str(VENV_BIN / "chunkfs"), "put", "--url", url, "--key", "CKNOPE:wrong", str(local),
                            "/via-url/again.bin"], capture_output=True, text=True, timeout=60, env=env)
    assert wrong.returncode == 3, wrong.stderr


def test_status_page_lists_the_gateway_and_metrics_count_sessions(gateway_cluster, gateway, s3):
    page = lambda: urllib.request.urlopen(f"http://{gateway_cluster.metaserver}/", timeout=10).read().decode()
    s3_address = gateway.s3.removeprefix("http://")
    wait_until(lambda: f"S3 {s3_address}" in page(), 30, "the status page lists the gateway")
    s3.create_bucket(Bucket="sessions")
    upload = s3.create_multipart_upload(Bucket="sessions", Key="open")["UploadId"]
    address = gateway.rest.removeprefix("http://").removesuffix("/api/v1")
    try:
        wait_until(lambda: metrics_of(address).get("chunkfs_gateway_upload_sessions", 0) >= 1, 30,
                   "the gauge counts the open upload")
    finally:
        s3.abort_multipart_upload(Bucket="sessions", Key="open", UploadId=upload)


def test_bench_sets_the_gateway_beside_the_mount(gateway_cluster, gateway, root_key):
    """`chunkfs bench --only data --only small --only gateway`, small: every gateway figure comes
    back with its ratio to the mount's, and its bucket is gone afterwards."""
    result = subprocess.run([str(VENV_BIN / "chunkfs"), "bench", str(gateway_cluster.mnt), "--only", "data",
                             "--only", "small", "--only", "gateway", "--size-mb", "16", "--files", "30",
                             "--gateway", gateway.s3, "--gateway-key",
                             f"{root_key['access_key_id']}:{root_key['secret_access_key']}",
                             "--gateway-clients", "2", "--gateway-list-keys", "300", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)["results"][str(gateway_cluster.mnt)]
    for key in ("gw_curl_put_mib_s", "gw_curl_get_mib_s", "gw_put_objects_s", "gw_list_s", "gw_list_raw_s",
                "gw_rss_mib", "gw_put_per_seq_write", "gw_get_per_cold_read", "gw_creates_per_creates"):
        assert figures[key] > 0, key
    assert figures["gw_list_keys"] == 300
    assert not [p for p in gateway_cluster.mnt.iterdir() if p.name.startswith("chunkfs-bench-")]
