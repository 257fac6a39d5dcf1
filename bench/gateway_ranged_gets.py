"""Ranged GETs of one object through the gateway's S3 door, as awscli downloads a large object
(in parts, each its own ranged GET): the metaserver calls each GET costs, by name, and the CPU
milliseconds per GET of the gateway and of the metaserver (utime+stime from /proc/PID/stat).

    .venv/bin/python bench/gateway_ranged_gets.py --cluster .chunkfs --gateway-key ID:SECRET \\
        [--gateway http://127.0.0.1:9580] [--metaserver 127.0.0.1:9520] [--gets 200] [--part-mib 1]

Starts nothing: `--cluster` is a running `chunkfs up --dir DIR` (the daemons' pids are read
from DIR/run/). It PUTs one 16-part object with a content type and user metadata (so that a
GET has xattrs to describe it with), then GETs its parts in turn, one connection, one at a
time. To compare two versions of the gateway, restart it from the other checkout between runs
and alternate them; give the load average with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import time
from pathlib import Path

import httpx

from chunkfs.bench_gateway import GatewayTarget

PARTS = 16
CALLS = re.compile(r'^chunkfs_http_requests_total\{op="([^"]+)",route="([^"]+)"[^}]*\} (\S+)$', re.MULTILINE)
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(run_dir: Path, daemon: str) -> float:
    pid = (run_dir / f"{daemon}.pid").read_text().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def calls(metaserver: str) -> dict[str, float]:
    """The metaserver's requests so far, by operation (filesystem calls) or route."""
    counted: dict[str, float] = {}
    for op, route, value in CALLS.findall(httpx.get(f"http://{metaserver}/metrics", timeout=30).text):
        name = op if route == "/v1/fs/{op}" else route
        counted[name] = counted.get(name, 0.0) + float(value)
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", type=Path, required=True, help="the `chunkfs up --dir` of the cluster")
    parser.add_argument("--gateway", default="http://127.0.0.1:9580", help="its S3 address")
    parser.add_argument("--gateway-key", required=True, help="ID:SECRET")
    parser.add_argument("--metaserver", default="127.0.0.1:9520", help="HOST:PORT")
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--part-mib", type=int, default=1)
    args = parser.parse_args()
    run_dir = args.cluster / "run"
    s3 = GatewayTarget.parse(args.gateway, args.gateway_key).s3_client()
    bucket = f"chunkfs-bench-{secrets.token_hex(4)}"
    part = args.part_mib << 20
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="object", Body=os.urandom(PARTS * part),
                      ContentType="application/x-bench", Metadata={"made-by": "gateway_ranged_gets"})
        s3.get_object(Bucket=bucket, Key="object", Range="bytes=0-0")["Body"].read()
        calls_before = calls(args.metaserver)
        gateway_before, meta_before = cpu_s(run_dir, "gateway"), cpu_s(run_dir, "metaserver")
        start = time.perf_counter()
        for i in range(args.gets):
            offset = (i % PARTS) * part
            s3.get_object(Bucket=bucket, Key="object", Range=f"bytes={offset}-{offset + part - 1}")["Body"].read()
        wall_s = time.perf_counter() - start
        gateway_s, meta_s = cpu_s(run_dir, "gateway") - gateway_before, cpu_s(run_dir, "metaserver") - meta_before
        after = calls(args.metaserver)
        per_get = {name: round((n - calls_before.get(name, 0.0)) / args.gets, 2) for name, n in after.items()
                   if n - calls_before.get(name, 0.0) >= 1 and name != "/metrics"}
        print(json.dumps({"load": os.getloadavg()[0], "gets_per_s": round(args.gets / wall_s, 1),
                          "gateway_cpu_ms": round(1000 * gateway_s / args.gets, 2),
                          "meta_cpu_ms": round(1000 * meta_s / args.gets, 2), "meta_calls_per_get": per_get}))
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


if __name__ == "__main__":
    main()
