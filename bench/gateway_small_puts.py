"""4 KiB objects through the gateway's S3 door beside 4 KiB files created on the mount, in one
run: the issue's small-PUT row (PUTs/s at least the mount's creates/s), with where the time went.

Each round creates `--files` files of 4 KiB on the mount (O_CREAT|O_EXCL, write, close, as
`chunkfs bench` times them) and PUTs as many 4 KiB objects (botocore, one connection, one after
the other), and gives for each: the rate, the CPU seconds per operation of the gateway and of
the metaserver (their /metrics), and the metaserver calls per operation by name.

    .venv/bin/python bench/gateway_small_puts.py --mount mnt --gateway http://127.0.0.1:9580 \\
        --gateway-key ID:SECRET --metaserver 127.0.0.1:9520 [--files 500] [--rounds 3]

Starts nothing: run it against a cluster with a gateway (`chunkfs up`). What it makes goes into
a bucket of its own, removed through the mount at the end. Give the load average with the
figures: the machine's load shows in every one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from chunkfs.bench_gateway import GatewayTarget

SMALL_BYTES = 4096
CPU = re.compile(r"^process_cpu_seconds_total (\S+)$", re.MULTILINE)
FS_CALL = re.compile(r'^chunkfs_http_requests_total\{op="([^"]+)",route="/v1/fs/\{op\}"[^}]*\} (\S+)$', re.MULTILINE)


def metrics(url: str) -> tuple[float, dict[str, int]]:
    """A daemon's CPU seconds and (for the metaserver) its filesystem calls by operation."""
    text = httpx.get(url, timeout=30).text
    cpu = CPU.search(text)
    calls: dict[str, int] = {}
    for op, value in FS_CALL.findall(text):
        calls[op] = calls.get(op, 0) + int(float(value))
    return float(cpu.group(1)) if cpu else 0.0, calls


def measured(count: int, work: Callable[[int], object], gateway_metrics: str, meta_metrics: str) -> dict[str, object]:
    gw_before, _ = metrics(gateway_metrics)
    meta_before, calls_before = metrics(meta_metrics)
    start = time.perf_counter()
    for i in range(count):
        work(i)
    wall = time.perf_counter() - start
    gw_after, _ = metrics(gateway_metrics)
    meta_after, calls_after = metrics(meta_metrics)
    calls = {op: round((n - calls_before.get(op, 0)) / count, 2) for op, n in calls_after.items()
             if n > calls_before.get(op, 0)}
    return {"per_s": round(count / wall, 1), "gateway_cpu_ms": round(1000 * (gw_after - gw_before) / count, 3),
            "meta_cpu_ms": round(1000 * (meta_after - meta_before) / count, 3), "meta_calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mount", type=Path, required=True)
    parser.add_argument("--gateway", required=True, help="its S3 address, http://HOST:PORT")
    parser.add_argument("--gateway-key", required=True, help="ID:SECRET")
    parser.add_argument("--metaserver", required=True, help="HOST:PORT")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = GatewayTarget.parse(args.gateway, args.gateway_key)
    gateway_metrics, meta_metrics = f"{target.rest}/metrics", f"http://{args.metaserver}/metrics"
    bucket = f"chunkfs-bench-{secrets.token_hex(4)}"
    s3 = target.s3_client()
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(SMALL_BYTES)
    scratch = args.mount / f".bench-small-{secrets.token_hex(4)}"
    scratch.mkdir()
    try:
        for round_number in range(args.rounds):
            folder = scratch / str(round_number)
            folder.mkdir()

            def create(i: int, folder: Path = folder) -> None:
                fd = os.open(folder / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, body)
                finally:
                    os.close(fd)

            def put(i: int, round_number: int = round_number) -> None:
                s3.put_object(Bucket=bucket, Key=f"small{round_number}/{i:06d}", Body=body)

            mount = measured(args.files, create, gateway_metrics, meta_metrics)
            gateway = measured(args.files, put, gateway_metrics, meta_metrics)
            print(json.dumps({"round": round_number, "load": os.getloadavg()[0], "mount_creates": mount,
                              "gateway_puts": gateway,
                              "puts_per_creates": round(float(gateway["per_s"]) / float(mount["per_s"]), 2)}),  # type: ignore[arg-type]
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(args.mount / bucket, ignore_errors=True)


if __name__ == "__main__":
    main()
