"""The gateway's workloads of `chunkfs bench` (`--gateway URL --gateway-key ID:SECRET`): the
same cluster as the mount being measured, through its HTTP door, so each figure stands beside
the mount's figure for the same work (the issue's table):

- a `size_mb` file PUT and GET through the REST API with curl, and with `aws s3 cp` (multipart)
  when awscli is installed; the GET after the gateway's chunk cache was bypassed (a new object
  far larger than it, or dropped page cache as root);
- 4 KiB object PUTs per second over S3 (botocore, one connection, one after the other, as the
  mount's creates are timed);
- a listing of a 10,000-key prefix over S3, paged 1,000 keys a page (ListObjectsV2), twice: with
  botocore (what boto3 and awscli spend, its XML parsing included) and with plain signed HTTP
  requests whose answers are only searched for their keys and continuation token (the
  gateway's own share, as curl would see it);
- the gateway's peak RSS (its /metrics) while `clients` clients each upload a `size_mb` object.

Everything goes into a bucket of its own (`chunkfs-bench-RANDOM`), removed through the mount at
the end. Needs nothing beyond chunkfs's own dependencies (botocore, httpx) and curl.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from chunkfs.bench import unique_mibs

MiB = 1024 * 1024
LIST_KEYS = 10_000  # the listing: a 10,000-key prefix in under 1 s
LIST_PAGE = 1000
PUT_THREADS = 16
RSS_SAMPLE_S = 0.5


class GatewayBenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class GatewayTarget:
    """Where the gateway is: its S3 and REST addresses (http://HOST:PORT) and an access key."""

    s3: str
    rest: str
    access_key_id: str
    secret: str

    @classmethod
    def parse(cls, url: str, key: str) -> GatewayTarget:
        """From the S3 address (the REST API is on the next port, as `chunkfs up` places it)."""
        match = re.fullmatch(r"(https?://[^:/]+):(\d+)/?", url)
        if match is None:
            raise GatewayBenchError(f"--gateway {url!r}: give the S3 address as http://HOST:PORT")
        access_key_id, _, secret = key.partition(":")
        if not secret:
            raise GatewayBenchError("--gateway-key: give the access key as ID:SECRET")
        return cls(url.rstrip("/"), f"{match.group(1)}:{int(match.group(2)) + 1}", access_key_id, secret)

    def s3_client(self) -> Any:
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.s3, region_name="us-east-1", aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret,
            config=botocore.config.Config(signature_version="s3v4", max_pool_connections=PUT_THREADS,
                                          retries={"max_attempts": 1}, s3={"addressing_style": "path"}))

    @property
    def token(self) -> str:
        return f"{self.access_key_id}:{self.secret}"


def _timed(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.CalledProcessError as exc:
        raise GatewayBenchError(f"{command[0]} exited with {exc.returncode}: {exc.stderr.strip()[-500:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise GatewayBenchError(f"{command[0]} took longer than {timeout_s:.0f} s") from exc
    return time.perf_counter() - start


def _awscli() -> str | None:
    import sys

    beside = Path(sys.executable).with_name("aws")
    return str(beside) if beside.exists() else shutil.which("aws")


def transfers(target: GatewayTarget, bucket: str, local_file: Path, size_mb: int, timeout_s: float) -> dict[str, float]:
    """A size_mb file in and out with curl (REST), and with awscli (S3, multipart) if installed."""
    auth = ["-H", f"Authorization: Bearer {target.token}"]
    url = f"{target.rest}/api/v1/files/{bucket}/curl.bin"
    figures = {"gw_curl_put_mib_s": size_mb / _timed(["curl", "-sSf", *auth, "-T", str(local_file), url], timeout_s)}
    figures["gw_curl_get_mib_s"] = size_mb / _timed(["curl", "-sSf", *auth, "-o", "/dev/null", url], timeout_s)
    aws = _awscli()
    if aws is not None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": target.access_key_id, "AWS_SECRET_ACCESS_KEY": target.secret,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        cli = [aws, "--endpoint-url", target.s3, "s3", "cp", "--only-show-errors"]
        figures["gw_aws_put_mib_s"] = size_mb / _timed([*cli, str(local_file), f"s3://{bucket}/aws.bin"], timeout_s, env)
        back = local_file.with_name("gateway-got")
        try:
            figures["gw_aws_get_mib_s"] = size_mb / _timed([*cli, f"s3://{bucket}/aws.bin", str(back)], timeout_s, env)
        finally:
            back.unlink(missing_ok=True)
    return figures


def small_objects(target: GatewayTarget, bucket: str, count: int) -> dict[str, float]:
    """4 KiB PUTs one after the other on one connection (as the mount's creates are timed)."""
    s3 = target.s3_client()
    body = os.urandom(4096)
    start = time.perf_counter()
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"small/{i:07d}", Body=body)
    return {"gw_put_objects_s": count / (time.perf_counter() - start)}


def put_keys(target: GatewayTarget, bucket: str, keys: list[str]) -> None:
    """A one-byte object at each of `keys`, PUT_THREADS writers at once (not timed)."""
    s3 = target.s3_client()

    def put(key: str) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    with concurrent.futures.ThreadPoolExecutor(PUT_THREADS) as pool:
        list(pool.map(put, keys))


def list_keys(s3: Any, bucket: str, prefix: str, page_keys: int = LIST_PAGE) -> list[str]:
    """Every key under `prefix`, by ListObjectsV2 in pages of `page_keys` (continuation tokens,
    as boto3's paginator and awscli go), in the order the gateway gave them (`s3`: a client
    made beforehand, so making it is not timed)."""
    keys: list[str] = []
    token = None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=page_keys,
                                  **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated"):
            return keys


def listing(target: GatewayTarget, bucket: str, keys: int) -> dict[str, float]:
    """`keys` keys under one prefix (not timed), then the whole prefix listed in pages of
    LIST_PAGE (timed)."""
    put_keys(target, bucket, [f"listed/{i:07d}" for i in range(keys)])
    s3 = target.s3_client()
    start = time.perf_counter()
    seen = len(list_keys(s3, bucket, "listed/"))
    elapsed = time.perf_counter() - start
    if seen != keys:
        raise GatewayBenchError(f"the listing returned {seen} keys of {keys}")
    start = time.perf_counter()
    seen = len(list_keys_raw(target, bucket, "listed/"))
    raw_elapsed = time.perf_counter() - start
    if seen != keys:
        raise GatewayBenchError(f"the raw listing returned {seen} keys of {keys}")
    return {"gw_list_s": elapsed, "gw_list_raw_s": raw_elapsed, "gw_list_keys": float(keys)}


RAW_KEY = re.compile(rb"<Key>([^<]*)</Key>")
RAW_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def list_keys_raw(target: GatewayTarget, bucket: str, prefix: str, page_keys: int = LIST_PAGE) -> list[str]:
    """`list_keys` without botocore's response parsing: each page a SigV4-signed GET (botocore's
    signer, as awscli signs) on one kept connection, its body searched for the keys and the next
    continuation token only, so the time is the gateway's and the wire's, not the client's XML
    parsing (keys are returned as sent: no XML entities are expected in bench keys)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = S3SigV4Auth(Credentials(target.access_key_id, target.secret), "s3", "us-east-1")
    keys: list[str] = []
    params = {"list-type": "2", "prefix": prefix, "max-keys": str(page_keys)}
    with httpx.Client(timeout=60) as http:
        while True:
            request = AWSRequest("GET", f"{target.s3}/{bucket}", params=params)
            signer.add_auth(request)
            prepared = request.prepare()
            response = http.get(prepared.url, headers=dict(prepared.headers))
            response.raise_for_status()
            keys += [k.decode() for k in RAW_KEY.findall(response.content)]
            token = RAW_TOKEN.search(response.content)
            if token is None:
                return keys
            params["continuation-token"] = token.group(1).decode()


def _rss_bytes(rest: str) -> float:
    text = httpx.get(f"{rest}/metrics", timeout=10).text
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _body(size_mb: int) -> Iterator[bytes]:
    """Bytes no two MiB alike (dedup would store a repeated block once: no upload to measure)."""
    for block in unique_mibs(size_mb):
        yield bytes(block)


def rss_under_uploads(target: GatewayTarget, bucket: str, clients: int, size_mb: int, timeout_s: float
                      ) -> dict[str, float]:
    """The gateway's peak RSS (sampled from its /metrics) while `clients` clients each stream
    a `size_mb` object to it at once (REST PUT)."""
    peak = _rss_bytes(target.rest)

    def upload(n: int) -> None:
        response = httpx.put(f"{target.rest}/api/v1/files/{bucket}/rss/{n}.bin", content=_body(size_mb),
                             headers={"Authorization": f"Bearer {target.token}"}, timeout=timeout_s)
        response.raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(upload, n) for n in range(clients)]
        while concurrent.futures.wait(futures, timeout=RSS_SAMPLE_S).not_done:
            peak = max(peak, _rss_bytes(target.rest))
        for future in futures:
            future.result()
    return {"gw_rss_mib": peak / MiB, "gw_rss_clients": float(clients)}


def run(target: GatewayTarget, mountpoint: Path | None, local_file: Path, size_mb: int, files: int, clients: int,
        list_keys: int, timeout_s: float) -> dict[str, float]:
    """Every gateway workload in a bucket of its own, removed (through the mount) at the end."""
    bucket = f"chunkfs-bench-{secrets.token_hex(4)}"
    target.s3_client().create_bucket(Bucket=bucket)
    try:
        figures = transfers(target, bucket, local_file, size_mb, timeout_s)
        figures.update(small_objects(target, bucket, files))
        figures.update(listing(target, bucket, list_keys))
        if clients:
            figures.update(rss_under_uploads(target, bucket, clients, size_mb, timeout_s))
        return figures
    finally:
        if mountpoint is not None:
            shutil.rmtree(mountpoint / bucket, ignore_errors=True)
