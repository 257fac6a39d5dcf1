"""The gateway as its users meet it: boto3, awscli and curl against a real gateway process on a
real cluster, each checked against the FUSE mount of the same namespace (same bytes, same
permissions), and S3's own XML errors for bad requests."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chunkfs.daemons import answers_health, stop_pid
from bench.large_directory import fill
from conftest import _cluster, calls_made, chunkfs, chunkserver_reads, free_port_block, metrics_of, wait_until

FEED_DELAY_S = 10  # bound on another client's change reaching the mount's cache, on a loaded machine
MiB = 1 << 20


@dataclass
class Gateway:
    s3: str  # http://HOST:PORT
    rest: str  # http://HOST:PORT/api/v1
    keys_file: Path
    secret_file: Path
    log: Path

    def key(self, name: str, uid: int = 0, gid: int = 0) -> dict:
        result = chunkfs("gateway", "key", "add", name, "--uid", uid, "--gid", gid, "--keys-file", self.keys_file,
                         "--secret-file", self.secret_file, "--json")
        return json.loads(result.stdout)

    def client(self, key: dict, **config) -> object:
        return boto3.client("s3", endpoint_url=self.s3, aws_access_key_id=key["access_key_id"],
                            aws_secret_access_key=key["secret_access_key"], region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, signature_version="s3v4", **config))


@pytest.fixture(scope="module")
def gateway_cluster(tmp_path_factory):
    """A cluster without `chunkfs up`'s gateway: the `gateway` fixture runs its own."""
    yield from _cluster(tmp_path_factory)


@contextlib.contextmanager
def running_gateway(cluster, state: Path, s3_port: int, rest_port: int, *options: str, scheme: str = "http"):
    """chunkfs-gateway as a process of its own, stopped by its pid whatever happens."""
    gw = Gateway(f"{scheme}://127.0.0.1:{s3_port}", f"{scheme}://127.0.0.1:{rest_port}/api/v1", state / "keys.json",
                 cluster.secret_file, state / "gateway.log")
    with open(gw.log, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "chunkfs.gateway.main", "--s3-listen", f"127.0.0.1:{s3_port}",
                                    "--rest-listen", f"127.0.0.1:{rest_port}", "--metaserver", cluster.metaserver,
                                    "--secret-file", str(gw.secret_file), "--keys-file", str(gw.keys_file),
                                    "--retry-s", "5", *options], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(rest_port) or process.poll() is not None, 30, "the gateway listens")
        assert process.poll() is None, gw.log.read_text()
        yield gw
    finally:
        stop_pid(process.pid)
        process.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def gateway(gateway_cluster, tmp_path_factory):
    """The gateway of these tests, on the ports free_port_block kept for it."""
    port = gateway_cluster.port
    with running_gateway(gateway_cluster, tmp_path_factory.mktemp("gateway"), port + 60, port + 61,
                         "--domain", "s3.test") as gw:
        wait_until(lambda: answers_health(f"{gw.rest}/health", timeout_s=2), 30, "the gateway answers /health")
        yield gw


@pytest.fixture(scope="module")
def root_key(gateway):
    return gateway.key("root")


@pytest.fixture(scope="module")
def s3(gateway, root_key):
    return gateway.client(root_key)


def test_boto3_objects_are_the_mounts_files(gateway_cluster, s3):
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="boto")
    body = os.urandom(3 * MiB + 17)
    put = s3.put_object(Bucket="boto", Key="dir/sub/one.bin", Body=body, ContentType="application/x-test",
                        Metadata={"colour": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert (mnt / "boto/dir/sub/one.bin").read_bytes() == body
    assert os.getxattr(mnt / "boto/dir/sub/one.bin", "user.s3.meta.colour") == b"blue"
    got = s3.get_object(Bucket="boto", Key="dir/sub/one.bin")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["Metadata"], got["ETag"]) == ("application/x-test", {"colour": "blue"}, put["ETag"])
    checked = s3.get_object(Bucket="boto", Key="dir/sub/one.bin", ChecksumMode="ENABLED")  # boto3 checks the body
    assert checked["ChecksumCRC32"] == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert checked["Body"].read() == body
    (mnt / "boto/from-mount.txt").write_bytes(b"written on the mount")
    assert s3.get_object(Bucket="boto", Key="from-mount.txt")["Body"].read() == b"written on the mount"
    assert "boto" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket="boto")["ResponseMetadata"]["HTTPStatusCode"] == 200

    s3.copy_object(Bucket="boto", Key="copy.bin", CopySource={"Bucket": "boto", "Key": "dir/sub/one.bin"})
    assert (mnt / "boto/copy.bin").read_bytes() == body
    assert s3.head_object(Bucket="boto", Key="copy.bin")["Metadata"] == {"colour": "blue"}

    # the mount hears of another client's changes through the change feed, a moment later
    s3.delete_object(Bucket="boto", Key="dir/sub/one.bin")
    wait_until(lambda: not (mnt / "boto/dir").exists(), FEED_DELAY_S, "the directories it left empty went with it")
    deleted = s3.delete_objects(Bucket="boto", Delete={"Objects": [{"Key": "copy.bin"}, {"Key": "from-mount.txt"}]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy.bin", "from-mount.txt"]
    wait_until(lambda: os.listdir(mnt / "boto") == [], FEED_DELAY_S, "the mount sees the bucket emptied")
    s3.delete_bucket(Bucket="boto")
    wait_until(lambda: not (mnt / "boto").exists(), FEED_DELAY_S, "the mount sees the bucket gone")


def test_listing_prefix_delimiter_pages_and_start_after(gateway_cluster, s3):
    s3.create_bucket(Bucket="listing")
    keys = ["a-c", "a/b/1", "a/b/2", "a/c", "b", "c/d/e/f"]
    for key in keys:
        s3.put_object(Bucket="listing", Key=key, Body=key.encode())
    (gateway_cluster.mnt / "listing/empty").mkdir()
    everything = [o["Key"] for o in s3.list_objects_v2(Bucket="listing")["Contents"]]
    assert everything == sorted([*keys, "empty/"])  # S3's order: "a-c" before "a/..."
    top = s3.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a-c", "b"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "c/", "empty/"]
    under_a = s3.list_objects_v2(Bucket="listing", Prefix="a/", Delimiter="/")
    assert ([o["Key"] for o in under_a["Contents"]], [p["Prefix"] for p in under_a["CommonPrefixes"]]) == (["a/c"], ["a/b/"])
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="listing", PaginationConfig={"PageSize": 2}))
    assert len(pages) == 4 and [o["Key"] for p in pages for o in p.get("Contents", [])] == everything
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="listing", StartAfter="a/b/2")["Contents"]][:2] == ["a/c", "b"]
    v1 = s3.list_objects(Bucket="listing", Marker="b", MaxKeys=1)
    assert [o["Key"] for o in v1["Contents"]] == ["c/d/e/f"] and v1["IsTruncated"]
    versions = list(s3.get_paginator("list_object_versions").paginate(Bucket="listing",
                                                                      PaginationConfig={"PageSize": 3}))
    listed = [v for page in versions for v in page.get("Versions", [])]
    assert [v["Key"] for v in listed] == everything and len(versions) == 3
    assert {(v["VersionId"], v["IsLatest"]) for v in listed} == {("null", True)}  # buckets are never versioned


def _paged_listing(cluster, client, bucket: str, page_keys: int) -> tuple[dict[str, str], dict[str, float]]:
    """key -> ETag of the whole bucket as boto3's paginator lists it, and the metaserver calls it took."""
    listed: dict[str, str] = {}

    def list_all() -> None:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": page_keys})
        listed.update((o["Key"], o["ETag"]) for page in pages for o in page.get("Contents", []))

    return listed, calls_made(cluster, list_all)


def test_paged_listing_of_thousands_of_keys(gateway_cluster, gateway, s3):
    """boto3's paginator over 2,100 keys in one prefix and 600 under 20 more, in pages that do
    not fall on the metaserver's pages of 1,000: every key once, in S3's order. The whole listing
    reads each directory from the metaserver about once (not once a page: a page starts where the
    last ended, in the directory read for it) and no key's xattrs one by one: its ETag, and the
    ACL that says whether the caller may read it, come with the directory (a user who owns none
    of the keys is no exception: it gets the stored ETags, but where an ACL denies it the file)."""
    s3.create_bucket(Bucket="many")
    root = gateway_cluster.mnt / "many"
    (root / "flat").mkdir()
    fill(root / "flat", 0, 2100)
    subdirs = [root / f"tree/p{p:02d}" for p in range(20)]
    for directory in subdirs:
        directory.mkdir(parents=True)
        fill(directory, 0, 30)
    etags = {key: s3.put_object(Bucket="many", Key=key, Body=key.encode())["ETag"]  # kept in xattrs
             for key in ("flat/entry-000999", "flat/entry-002099", "tree/p07/entry-000003")}
    subprocess.run(["setfacl", "-m", "u:1000:-", root / "flat/entry-002099"], check=True)
    expected = sorted([f"flat/entry-{i:06d}" for i in range(2100)]
                      + [f"tree/p{p:02d}/entry-{i:06d}" for p in range(20) for i in range(30)], key=str.encode)
    reads_once = 1 + 3 + 1 + len(subdirs)  # the bucket, flat (3 metaserver pages), tree, its subdirectories
    for client in (s3, gateway.client(gateway.key("lister1000", uid=1000, gid=1000))):
        listed, calls = _paged_listing(gateway_cluster, client, "many", 700)
        assert list(listed) == expected
        assert calls.get("readdir", 0) < 2 * reads_once, calls
        assert not {"getxattr", "listxattr"} & set(calls), calls
        assert listed["flat/entry-000999"] == etags["flat/entry-000999"]
        assert listed["tree/p07/entry-000003"] == etags["tree/p07/entry-000003"]
        denied = client is not s3
        assert (listed["flat/entry-002099"] == etags["flat/entry-002099"]) != denied
    under_tree = s3.list_objects_v2(Bucket="many", Prefix="tree/", StartAfter="tree/p12/entry-000029", MaxKeys=31)
    assert [o["Key"] for o in under_tree["Contents"]] == expected[2100 + 13 * 30:2100 + 13 * 30 + 31]


def test_ranges_and_conditions(s3):
    s3.create_bucket(Bucket="ranges")
    body = bytes(range(256)) * 64
    etag = s3.put_object(Bucket="ranges", Key="r", Body=body)["ETag"]
    part = s3.get_object(Bucket="ranges", Key="r", Range="bytes=10-19")
    assert (part["Body"].read(), part["ContentRange"]) == (body[10:20], f"bytes 10-19/{len(body)}")
    assert s3.get_object(Bucket="ranges", Key="r", Range="bytes=-5")["Body"].read() == body[-5:]
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="ranges", Key="r", Range=f"bytes={len(body)}-")
    assert caught.value.response["Error"]["Code"] == "InvalidRange"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="ranges", Key="r", IfNoneMatch=etag)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="ranges", Key="r", IfMatch='"0123"')
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket="ranges", Key="r", IfMatch=etag)["Body"].read() == body
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket="ranges", Key="r", Body=b"x", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"


def _code(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_bad_requests_get_s3_errors(gateway, s3, root_key):
    s3.create_bucket(Bucket="errors")
    s3.put_object(Bucket="errors", Key="k", Body=b"v")
    assert _code(lambda: s3.get_object(Bucket="errors", Key="nope")) == "NoSuchKey"
    assert _code(lambda: s3.get_object(Bucket="no-such-bucket", Key="k")) == "NoSuchBucket"
    assert _code(lambda: s3.list_objects_v2(Bucket="no-such-bucket")) == "NoSuchBucket"
    assert _code(lambda: s3.delete_bucket(Bucket="errors")) == "BucketNotEmpty"
    s3.create_bucket(Bucket="errors")  # again by its owner: succeeds and changes nothing (S3 in us-east-1)
    assert s3.get_object(Bucket="errors", Key="k")["Body"].read() == b"v"
    other = gateway.client(gateway.key("errors1000", uid=1000, gid=1000))
    assert _code(lambda: other.create_bucket(Bucket="errors")) == "BucketAlreadyExists"
    assert _code(lambda: s3.put_object(Bucket="errors", Key="a/../b", Body=b"")) == "InvalidArgument"
    assert _code(lambda: s3.put_object(Bucket="errors", Key="x" * 1025, Body=b"")) == "KeyTooLongError"
    assert _code(lambda: s3.put_object(Bucket="errors", Key="k/under-a-file", Body=b"")) == "ObjectConflict"
    s3.put_object(Bucket="errors", Key="dir/inside", Body=b"")
    assert _code(lambda: s3.put_object(Bucket="errors", Key="dir", Body=b"")) == "ObjectConflict"
    s3.delete_object(Bucket="errors", Key="dir/inside")
    assert _code(lambda: s3.put_object(Bucket="errors", Key="md5", Body=b"abc", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")
                 ) == "BadDigest"
    wrong = gateway.client({**root_key, "secret_access_key": "not-the-secret"})
    assert _code(lambda: wrong.list_buckets()) == "SignatureDoesNotMatch"
    unknown = gateway.client({"access_key_id": "CKNOSUCHKEY", "secret_access_key": "x"})
    assert _code(lambda: unknown.list_buckets()) == "InvalidAccessKeyId"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{gateway.s3}/errors/k", timeout=10)
    assert anonymous.value.code == 403 and b"<Code>AccessDenied</Code>" in anonymous.value.read()
    assert s3.list_objects_v2(Bucket="errors")["KeyCount"] == 1  # nothing of the above was stored


def test_presigned_urls(s3):
    s3.create_bucket(Bucket="presigned")
    s3.put_object(Bucket="presigned", Key="p.txt", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "p.txt"}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned body"
    download = s3.generate_presigned_url("get_object", ExpiresIn=300, Params={
        "Bucket": "presigned", "Key": "p.txt", "ResponseContentType": "text/x-chosen",
        "ResponseContentDisposition": 'attachment; filename="p.txt"'})
    with urllib.request.urlopen(download, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/x-chosen"
        assert response.headers["Content-Disposition"] == 'attachment; filename="p.txt"'
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"), timeout=10)
    assert caught.value.code == 403 and b"SignatureDoesNotMatch" in caught.value.read()
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "up.txt"}, ExpiresIn=300)
    request = urllib.request.Request(put_url, data=b"uploaded by url", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert s3.get_object(Bucket="presigned", Key="up.txt")["Body"].read() == b"uploaded by url"
    short = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "p.txt"}, ExpiresIn=1)

    def expired() -> bool:
        try:
            urllib.request.urlopen(short, timeout=10).close()
        except urllib.error.HTTPError as exc:
            return exc.code == 403 and b"Request has expired" in exc.read()
        return False
    wait_until(expired, 10, "a presigned URL expires")


def test_multipart_upload_through_boto3(gateway_cluster, gateway, root_key, tmp_path):
    from boto3.s3.transfer import TransferConfig

    s3 = gateway.client(root_key)
    s3.create_bucket(Bucket="multipart")
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(13 * MiB))
    s3.upload_file(str(local), "multipart", "deep/big.bin",
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    etag = s3.head_object(Bucket="multipart", Key="deep/big.bin")["ETag"]
    assert etag.endswith('-3"')
    assert (gateway_cluster.mnt / "multipart/deep/big.bin").read_bytes() == local.read_bytes()
    assert os.listdir(gateway_cluster.mnt / ".chunkfs-uploads") == []  # the upload is gone once complete

    copied = s3.create_multipart_upload(Bucket="multipart", Key="copied")
    parts = [s3.upload_part_copy(Bucket="multipart", Key="copied", UploadId=copied["UploadId"], PartNumber=n,
                                 CopySource={"Bucket": "multipart", "Key": "deep/big.bin"},
                                 CopySourceRange=f"bytes={start}-{end}")["CopyPartResult"]["ETag"]
             for n, (start, end) in enumerate([(0, 5 * MiB - 1), (5 * MiB, 6 * MiB)], start=1)]
    s3.complete_multipart_upload(Bucket="multipart", Key="copied", UploadId=copied["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(parts, start=1)]})
    assert (gateway_cluster.mnt / "multipart/copied").read_bytes() == local.read_bytes()[: 6 * MiB + 1]

    upload = s3.create_multipart_upload(Bucket="multipart", Key="aborted")
    s3.upload_part(Bucket="multipart", Key="aborted", UploadId=upload["UploadId"], PartNumber=1, Body=b"x")
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket="multipart")["Uploads"]] == ["aborted"]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket="multipart", Key="aborted",
                                                   UploadId=upload["UploadId"])["Parts"]] == [1]
    assert not (gateway_cluster.mnt / "multipart/aborted").exists()  # nothing visible before Complete
    assert _code(lambda: s3.complete_multipart_upload(
        Bucket="multipart", Key="aborted", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]})) == "InvalidPart"
    s3.abort_multipart_upload(Bucket="multipart", Key="aborted", UploadId=upload["UploadId"])
    assert _code(lambda: s3.list_parts(Bucket="multipart", Key="aborted", UploadId=upload["UploadId"])
                 ) == "NoSuchUpload"


@pytest.mark.skipif(shutil.which("aws") is None and not (Path(sys.executable).parent / "aws").exists(),
                    reason="awscli is not installed")
def test_awscli_mb_cp_ls(gateway_cluster, gateway, root_key, tmp_path):
    aws = str(Path(sys.executable).parent / "aws") if (Path(sys.executable).parent / "aws").exists() else "aws"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": root_key["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": root_key["secret_access_key"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}

    def run(*args: str) -> str:
        result = subprocess.run([aws, "--endpoint-url", gateway.s3, *args], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("s3", "mb", "s3://cli")
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_text("small file\n")
    big.write_bytes(os.urandom(9 * MiB))  # above awscli's 8 MiB multipart threshold
    run("s3", "cp", str(small), "s3://cli/docs/small.txt")
    run("s3", "cp", str(big), "s3://cli/big.bin")
    listing = run("s3", "ls", "--recursive", "s3://cli")
    assert "docs/small.txt" in listing and "big.bin" in listing
    assert (gateway_cluster.mnt / "cli/big.bin").read_bytes() == big.read_bytes()
    run("s3", "cp", "s3://cli/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert "cli" in run("s3", "ls")


def test_namespace_permissions_are_obeyed(gateway_cluster, gateway, s3):
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="perms")
    (mnt / "perms/private").mkdir(mode=0o700)
    (mnt / "perms/private/secret.txt").write_bytes(b"root only")
    os.chmod(mnt / "perms/private", 0o700)
    (mnt / "perms/shared").mkdir()
    os.chown(mnt / "perms/shared", 1000, 1000)
    user = gateway.client(gateway.key("user1000", uid=1000, gid=1000))
    assert _code(lambda: user.get_object(Bucket="perms", Key="private/secret.txt")) == "AccessDenied"
    assert _code(lambda: user.put_object(Bucket="perms", Key="private/mine.txt", Body=b"x")) == "AccessDenied"
    assert _code(lambda: user.put_object(Bucket="perms", Key="top.txt", Body=b"x")) == "AccessDenied"
    user.put_object(Bucket="perms", Key="shared/mine.txt", Body=b"by uid 1000")
    st = os.stat(mnt / "perms/shared/mine.txt")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    os.chmod(mnt / "perms/shared/mine.txt", 0o600)
    os.chown(mnt / "perms/shared/mine.txt", 0, 0)  # now root's, and only root's
    assert _code(lambda: user.get_object(Bucket="perms", Key="shared/mine.txt")) == "AccessDenied"
    assert s3.get_object(Bucket="perms", Key="shared/mine.txt")["Body"].read() == b"by uid 1000"


def test_a_small_put_is_one_metaserver_call_with_its_metadata(gateway_cluster, s3):
    """A 4 KiB object is made whole in one call (one transaction: it appears with its ETag,
    content type, metadata and checksum or not at all); an overwrite replaces it, If-None-Match
    refuses it and changes nothing, a key over a directory is refused and leaves nothing."""
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="small")
    body, other = os.urandom(4096), os.urandom(1000)
    s3.put_object(Bucket="small", Key="a/zero", Body=b"")  # makes directory a
    calls = calls_made(gateway_cluster, lambda: s3.put_object(
        Bucket="small", Key="a/one", Body=body, ContentType="text/x-small", Metadata={"colour": "red"}))
    assert {op: n for op, n in calls.items() if op != "reserve_inodes"} == {"batch": 1}
    head = s3.head_object(Bucket="small", Key="a/one", ChecksumMode="ENABLED")
    assert head["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert (head["ContentType"], head["Metadata"]) == ("text/x-small", {"colour": "red"})
    assert head["ChecksumCRC32"] == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert (mnt / "small/a/one").read_bytes() == body
    assert os.getxattr(mnt / "small/a/one", "user.s3.meta.colour") == b"red"

    assert calls_made(gateway_cluster, lambda: s3.put_object(Bucket="small", Key="a/one", Body=other)) \
        .get("batch") == 1
    got = s3.get_object(Bucket="small", Key="a/one")
    assert (got["Body"].read(), got["ETag"], got["Metadata"]) == (other, f'"{hashlib.md5(other).hexdigest()}"', {})
    refused = _code(lambda: s3.put_object(Bucket="small", Key="a/one", Body=body, IfNoneMatch="*"))
    assert refused == "PreconditionFailed"
    assert s3.get_object(Bucket="small", Key="a/one")["Body"].read() == other
    assert _code(lambda: s3.put_object(Bucket="small", Key="a", Body=body)) is not None  # "a" holds keys
    wait_until(lambda: os.listdir(mnt / "small") == ["a"] and sorted(os.listdir(mnt / "small/a")) == ["one", "zero"],
               FEED_DELAY_S, "nothing but the object, no staged name left")


def test_parallel_ranged_gets_fetch_each_chunk_once(gateway_cluster, s3):
    """An S3 client's parallel download (ranged GETs of 8 MiB parts at once, as awscli's): each
    part's chunks are fetched ahead, and none twice."""
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="parts")
    body = os.urandom(40 * MiB + 5)
    (mnt / "parts/big").write_bytes(body)  # through the mount: nothing of it in the gateway's cache
    part = 8 * MiB
    before = sum(chunkserver_reads(gateway_cluster).values())

    def get(start: int) -> bytes:
        end = min(start + part, len(body)) - 1
        return s3.get_object(Bucket="parts", Key="big", Range=f"bytes={start}-{end}")["Body"].read()

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        got = b"".join(pool.map(get, range(0, len(body), part)))
    assert got == body
    fetched = sum(chunkserver_reads(gateway_cluster).values()) - before
    assert len(body) <= fetched < 1.2 * len(body), fetched


def test_ranged_gets_read_an_objects_description_once_per_version(gateway_cluster, gateway, s3):
    """The parts of one object (awscli's ranged GETs): the first reads the object's xattrs, the
    next ones of the same version do not; a change made on the mount (an xattr, the content, the
    mode) shows in the answers that follow, to each caller as its permissions allow."""
    mnt = gateway_cluster.mnt
    s3.create_bucket(Bucket="described")
    body = os.urandom(2 * MiB)
    s3.put_object(Bucket="described", Key="obj", Body=body, ContentType="text/x-first", Metadata={"colour": "blue"})

    def part(client, i: int) -> dict:
        got = client.get_object(Bucket="described", Key="obj", Range=f"bytes={i * MiB}-{(i + 1) * MiB - 1}")
        got["Body"].read()
        return got

    assert part(s3, 0)["Metadata"] == {"colour": "blue"}
    calls = calls_made(gateway_cluster, lambda: part(s3, 1))
    assert not {"listxattr", "getxattr"} & set(calls), calls
    os.setxattr(mnt / "described/obj", "user.s3.meta.colour", b"green")
    wait_until(lambda: part(s3, 0)["Metadata"] == {"colour": "green"}, FEED_DELAY_S, "an xattr set on the mount")
    (mnt / "described/obj").write_bytes(b"rewritten")
    wait_until(lambda: s3.head_object(Bucket="described", Key="obj")["ContentLength"] == 9, FEED_DELAY_S,
               "content written on the mount")
    head = s3.head_object(Bucket="described", Key="obj")
    assert head["ETag"] != f'"{hashlib.md5(body).hexdigest()}"' and head["Metadata"] == {"colour": "green"}
    reader = gateway.client(gateway.key("reader2000", uid=2000, gid=2000))
    assert reader.get_object(Bucket="described", Key="obj")["Body"].read() == b"rewritten"
    os.chmod(mnt / "described/obj", 0o600)

    def refused() -> bool:
        try:
            reader.head_object(Bucket="described", Key="obj")
        except ClientError as exc:
            return exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        return False

    wait_until(refused, FEED_DELAY_S, "a mode set on the mount")
    assert _code(lambda: reader.get_object(Bucket="described", Key="obj")) == "AccessDenied"


def test_an_interrupted_put_leaves_nothing(gateway_cluster, gateway, s3):
    """A client that goes away mid-body: no object, no temporary file left in the directory."""
    s3.create_bucket(Bucket="interrupted")
    request = s3.generate_presigned_url("put_object", Params={"Bucket": "interrupted", "Key": "half"}, ExpiresIn=300)
    path_and_query = request.split(gateway.s3, 1)[1]
    host, port = gateway.s3.removeprefix("http://").split(":")
    metrics_address = gateway.rest.removeprefix("http://").removesuffix("/api/v1")
    cut = 'chunkfs_gateway_errors_total{code="IncompleteBody",door="s3",operation="put_object"}'
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"PUT {path_and_query} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {10 * MiB}\r\n\r\n"
                     .encode() + b"x" * (5 * MiB))
    wait_until(lambda: metrics_of(metrics_address).get(cut, 0) >= 1, 30, "the gateway saw the body cut short")
    assert os.listdir(gateway_cluster.mnt / "interrupted") == []
    assert _code(lambda: s3.head_object(Bucket="interrupted", Key="half")) == "404"


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_rest_api_with_curl(gateway_cluster, gateway, tmp_path):
    key = gateway.key("rest")
    auth = f"Authorization: Bearer {key['access_key_id']}:{key['secret_access_key']}"
    health = json.loads(curl(f"{gateway.rest}/health").stdout)
    assert health["status"] == "ok" and len(health["chunkservers"]) == 3
    assert json.loads(curl(f"{gateway.rest}/stats").stdout)["error"] == "Unauthorized"
    stats = json.loads(curl("-H", auth, f"{gateway.rest}/stats").stdout)
    assert stats["chunk_size_bytes"] == 4 * MiB and stats["chunkservers_alive"] == 3
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(5 * MiB + 3))
    put = json.loads(curl("-H", auth, "-T", str(local), f"{gateway.rest}/files/rest/dir/up.bin").stdout)
    assert put == {"path": "/rest/dir/up.bin", "size": local.stat().st_size,
                   "md5": hashlib.md5(local.read_bytes()).hexdigest()}
    assert (gateway_cluster.mnt / "rest/dir/up.bin").read_bytes() == local.read_bytes()
    got = curl("-H", auth, f"{gateway.rest}/files/rest/dir/up.bin")
    assert got.stdout == local.read_bytes()
    assert curl("-H", auth, "-r", "100-199", f"{gateway.rest}/files/rest/dir/up.bin").stdout == local.read_bytes()[100:200]
    head = curl("-H", auth, "-I", f"{gateway.rest}/files/rest/dir/up.bin").stdout.decode()
    assert f"content-length: {local.stat().st_size}" in head.lower()
    listing = json.loads(curl("-H", auth, f"{gateway.rest}/files/rest/dir?list").stdout)
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [("up.bin", "file", local.stat().st_size)]
    status = json.loads(curl("-H", auth, f"{gateway.rest}/files/rest/dir/up.bin?status").stdout)
    assert (status["chunks"], status["goal"], status["chunks_under_goal"]) == (2, 3, 0)
    assert curl("-H", auth, "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}",
                f"{gateway.rest}/files/rest/dir/up.bin").stdout == b"204"
    assert not (gateway_cluster.mnt / "rest/dir/up.bin").exists()
    missing = curl("-H", auth, "-w", "%{http_code}", "-o", "/dev/null", f"{gateway.rest}/files/rest/nothing")
    assert missing.stdout == b"404"


@pytest.mark.parametrize("fresh_cluster", [{"gateway": True}], indirect=True)
def test_chunkfs_up_starts_a_gateway_and_down_stops_it(fresh_cluster):
    rest = f"http://127.0.0.1:{fresh_cluster.port + 61}/api/v1"
    assert answers_health(f"{rest}/health", timeout_s=2)
    pid = fresh_cluster.pid("gateway")
    assert pid is not None
    key = json.loads(chunkfs("gateway", "key", "add", "me", "--dir", fresh_cluster.dir, "--json").stdout)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{fresh_cluster.port + 60}", region_name="us-east-1",
                      aws_access_key_id=key["access_key_id"], aws_secret_access_key=key["secret_access_key"])
    s3.create_bucket(Bucket="upped")
    s3.put_object(Bucket="upped", Key="k", Body=b"through chunkfs up's gateway")
    assert (fresh_cluster.mnt / "upped/k").read_bytes() == b"through chunkfs up's gateway"
    before = os.urandom(6 * MiB)
    s3.put_object(Bucket="upped", Key="before", Body=before)
    fresh_cluster.kill("cs1")  # with a chunkserver gone, GETs read the other replicas and PUTs land
    assert s3.get_object(Bucket="upped", Key="before")["Body"].read() == before
    after = os.urandom(6 * MiB)
    s3.put_object(Bucket="upped", Key="after", Body=after)
    assert (fresh_cluster.mnt / "upped/after").read_bytes() == after
    listed = json.loads(chunkfs("gateway", "key", "list", "--dir", fresh_cluster.dir, "--json").stdout)
    assert [k["name"] for k in listed] == ["me"] and "secret_access_key" not in listed[0]
    chunkfs("gateway", "key", "remove", "me", "--dir", fresh_cluster.dir)
    assert _code(lambda: s3.list_buckets()) == "InvalidAccessKeyId"
    fresh_cluster.down()
    assert not Path(f"/proc/{pid}").exists() or fresh_cluster.pid("gateway") is None
    with contextlib.suppress(OSError):
        assert not answers_health(f"{rest}/health", timeout_s=2)


def _tus(gateway: Gateway, key: dict, method: str, path: str, body: bytes = b"", **headers: str):
    import http.client

    host, port = gateway.rest.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    token = f"{key['access_key_id']}:{key['secret_access_key']}"
    conn.request(method, path, body=body, headers={"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {token}",
                                                   **{k.replace("_", "-"): v for k, v in headers.items()}})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_tus_upload_interrupted_and_resumed(gateway_cluster, gateway):
    key = gateway.key("tus")
    data = os.urandom(3 * MiB + 5)
    options = _tus(gateway, key, "OPTIONS", "/api/v1/uploads/")
    assert options.status == 204 and "creation" in options.getheader("Tus-Extension")
    target = base64.b64encode(b"/tus/deep/file.bin").decode()
    created = _tus(gateway, key, "POST", "/api/v1/uploads/", Upload_Length=str(len(data)),
                   Upload_Metadata=f"path {target}")
    assert created.status == 201
    location = created.getheader("Location")
    first = _tus(gateway, key, "PATCH", location, data[:MiB], Upload_Offset="0",
                 Content_Type="application/offset+octet-stream")
    assert (first.status, first.getheader("Upload-Offset")) == (204, str(MiB))
    assert _tus(gateway, key, "PATCH", location, b"x", Upload_Offset="0",
                Content_Type="application/offset+octet-stream").status == 409
    host, port = gateway.rest.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:  # a PATCH cut off mid-body
        conn.sendall(f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
                     f"Authorization: Bearer {key['access_key_id']}:{key['secret_access_key']}\r\n"
                     f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {MiB}\r\n"
                     f"Content-Length: {len(data) - MiB}\r\n\r\n".encode() + data[MiB: MiB + 512 * 1024])

    def offset() -> int:
        return int(_tus(gateway, key, "HEAD", location).getheader("Upload-Offset"))
    wait_until(lambda: offset() > MiB, 30, "the bytes that arrived before the cut are kept")
    assert not (gateway_cluster.mnt / "tus/deep/file.bin").exists()
    resumed_at = offset()
    last = _tus(gateway, key, "PATCH", location, data[resumed_at:], Upload_Offset=str(resumed_at),
                Content_Type="application/offset+octet-stream")
    assert (last.status, last.getheader("Upload-Offset")) == (204, str(len(data)))
    assert (gateway_cluster.mnt / "tus/deep/file.bin").read_bytes() == data
    assert _tus(gateway, key, "HEAD", location).status == 404

    other = _tus(gateway, key, "POST", "/api/v1/uploads/", Upload_Length="10",
                 Upload_Metadata=f"path {base64.b64encode(b'/tus/other').decode()}").getheader("Location")
    assert _tus(gateway, key, "DELETE", other).status == 204
    assert _tus(gateway, key, "HEAD", other).status == 404
    assert not (gateway_cluster.mnt / "tus/other").exists()
    assert _tus(gateway, {"access_key_id": "x", "secret_access_key": "y"}, "HEAD", other).status == 401


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_boto3_over_tls_sends_aws_chunked_bodies_with_a_checksum_trailer(gateway_cluster, tmp_path):
    """Over HTTPS boto3 streams PUT bodies as aws-chunked with an x-amz-checksum-crc32 trailer
    (STREAMING-UNSIGNED-PAYLOAD-TRAILER); a second gateway on the same cluster serves TLS."""
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key_file), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    base = free_port_block(2)
    with running_gateway(gateway_cluster, tmp_path, base, base + 1, "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key_file), scheme="https") as tls:
        s3 = boto3.client("s3", endpoint_url=tls.s3, verify=False, region_name="us-east-1",
                          aws_access_key_id=(k := tls.key("tls"))["access_key_id"],
                          aws_secret_access_key=k["secret_access_key"])
        sent = []
        s3.meta.events.register("before-send.s3.PutObject",
                                lambda request, **_: sent.append(request.headers.get("x-amz-content-sha256")))
        s3.create_bucket(Bucket="tls")
        body = os.urandom(2 * MiB + 1)
        s3.put_object(Bucket="tls", Key="streamed.bin", Body=io.BytesIO(body))
        assert sent == [b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
        assert (gateway_cluster.mnt / "tls/streamed.bin").read_bytes() == body
        assert s3.get_object(Bucket="tls", Key="streamed.bin")["Body"].read() == body


def test_abandoned_uploads_are_collected(gateway_cluster, tmp_path):
    """An upload untouched for upload_expiry_s goes (here 2 s, on a gateway of its own)."""
    base = free_port_block(2)
    with running_gateway(gateway_cluster, tmp_path, base, base + 1, "--upload-expiry-s", "2") as expiring:
        s3 = expiring.client(expiring.key("expiring"))
        s3.create_bucket(Bucket="abandoned")
        upload = s3.create_multipart_upload(Bucket="abandoned", Key="never-completed")
        s3.upload_part(Bucket="abandoned", Key="never-completed", UploadId=upload["UploadId"], PartNumber=1, Body=b"x")
        wait_until(lambda: "Uploads" not in s3.list_multipart_uploads(Bucket="abandoned"), 30,
                   "the abandoned upload is collected")
        assert _code(lambda: s3.list_parts(Bucket="abandoned", Key="never-completed", UploadId=upload["UploadId"])
                     ) == "NoSuchUpload"


def test_virtual_host_style_addressing(gateway, s3, root_key):
    """With `domain` set, BUCKET.DOMAIN/KEY is the object BUCKET/KEY (signed for that host)."""
    import http.client

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    s3.create_bucket(Bucket="vhost")
    s3.put_object(Bucket="vhost", Key="dir/v.txt", Body=b"virtual host")
    request = AWSRequest(method="GET", url="http://vhost.s3.test/dir/v.txt")
    S3SigV4Auth(Credentials(root_key["access_key_id"], root_key["secret_access_key"]), "s3", "us-east-1"
                ).add_auth(request)
    host, port = gateway.s3.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/dir/v.txt", headers={**dict(request.headers.items()), "Host": "vhost.s3.test"})
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"virtual host")
    conn.close()


def test_a_quota_on_a_bucket_refuses_a_put_past_it(gateway_cluster, s3):
    """EDQUOT from a directory quota is S3's QuotaExceeded (507)."""
    s3.create_bucket(Bucket="quota")
    chunkfs("quota", "set", gateway_cluster.mnt / "quota", "--bytes", "1M")
    s3.put_object(Bucket="quota", Key="small", Body=b"x" * 1000)
    assert _code(lambda: s3.put_object(Bucket="quota", Key="big", Body=os.urandom(2 * MiB))) == "QuotaExceeded"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="quota")["Contents"]] == ["small"]
