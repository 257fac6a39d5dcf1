"""Listing 10,000 keys through the gateway's S3 door, paged 1,000 a page as boto3's paginator and
awscli do (ListObjectsV2 with continuation tokens), in two layouts: every key in one prefix
(one directory), and the keys spread over 100 prefixes (100 directories, listed whole, without
a delimiter). Each listing is checked (every key once, in S3's order) and timed, and beside its
wall time stand where the CPU went and what the metaserver was asked:

- `client`: `botocore` (boto3's client: signing, sending and parsing each page, as boto3's
  paginator and awscli do) or `raw` (the same requests signed by botocore's signer and sent on one
  kept httpx connection, each answer only searched for its keys and token: the gateway's and the
  wire's share, as curl would see it);
- `client_cpu_s`: this process (signing requests, and parsing the XML with `botocore`);
- `gateway_cpu_s`, `meta_cpu_s`: the gateway's and the metaserver's CPU (their /metrics);
- `meta_calls`: metaserver requests by operation during the listing (its /metrics).

A "cold" listing is the first after its directories changed (the gateway reads them from the
metaserver); a "warm" one follows within the gateway's snapshot time-out (listing_cache.py).
Before each cold run a marker key is PUT and deleted in every directory of the layout.

    .venv/bin/python bench/gateway_listing.py --gateway http://127.0.0.1:9580 \\
        --gateway-key ID:SECRET --metaserver 127.0.0.1:9520 [--keys 10000] [--prefixes 100] [--runs 3]

Starts nothing: run it against a cluster with a gateway (`chunkfs up`). The keys go into a
bucket of its own, removed at the end unless `--keep` (then `--bucket NAME` lists them again
without filling). The machine's load shows in every figure: give the load average with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from chunkfs.bench_gateway import LIST_PAGE, GatewayTarget, list_keys, list_keys_raw, put_keys

CPU = re.compile(r"^process_cpu_seconds_total (\S+)$", re.MULTILINE)
FS_CALL = re.compile(r'^chunkfs_http_requests_total\{op="([^"]+)",route="/v1/fs/\{op\}"[^}]*\} (\S+)$', re.MULTILINE)


@dataclass
class Layout:
    name: str
    prefix: str  # what is listed
    keys: list[str]
    directories: list[str]  # the prefixes a marker key is put into to make a listing cold


@dataclass
class Run:
    layout: str
    client: str
    cold: bool
    wall_s: float
    client_cpu_s: float
    gateway_cpu_s: float
    meta_cpu_s: float
    meta_calls: dict[str, int] = field(default_factory=dict)


def layouts(keys: int, prefixes: int) -> list[Layout]:
    one = Layout("one prefix", "one/", [f"one/k{i:06d}" for i in range(keys)], ["one/"])
    dirs = [f"spread/p{p:03d}/" for p in range(prefixes)]
    spread = Layout(f"{prefixes} prefixes", "spread/", [f"{dirs[i % prefixes]}k{i:06d}" for i in range(keys)], dirs)
    return [one, spread]


class Scrape:
    """CPU seconds and filesystem calls by operation (the metaserver's /v1/fs/{op}, every
    client's) from a daemon's Prometheus text."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> tuple[float, dict[str, int]]:
        text = httpx.get(self.url, timeout=30).text
        cpu = CPU.search(text)
        calls: dict[str, int] = {}
        for op, value in FS_CALL.findall(text):
            calls[op] = calls.get(op, 0) + int(float(value))
        return float(cpu.group(1)) if cpu else 0.0, calls


def timed_listing(lister: Lister, bucket: str, layout: Layout, cold: bool, gateway: Scrape, meta: Scrape | None
                  ) -> Run:
    gw_cpu, _ = gateway.read()
    meta_cpu, meta_calls = meta.read() if meta else (0.0, {})
    client_cpu = time.process_time()
    start = time.perf_counter()
    got = lister.list(bucket, layout.prefix)
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    gw_after, _ = gateway.read()
    meta_after, calls_after = meta.read() if meta else (0.0, {})
    expected = sorted(layout.keys, key=lambda k: k.encode())
    if got != expected:
        missing = len(set(expected) - set(got))
        raise SystemExit(f"{layout.name}: the listing gave {len(got)} keys ({missing} missing), not the "
                         f"{len(expected)} in order")
    calls = {op: n - meta_calls.get(op, 0) for op, n in calls_after.items() if n - meta_calls.get(op, 0) > 0}
    return Run(layout.name, lister.name, cold, wall, client_cpu, gw_after - gw_cpu, meta_after - meta_cpu, calls)


def make_cold(s3: Any, bucket: str, layout: Layout) -> None:
    """A change in each directory of the layout, undone at once: the gateway's snapshots of them
    no longer hold."""
    for directory in layout.directories:
        s3.put_object(Bucket=bucket, Key=f"{directory}~marker", Body=b"")
        s3.delete_object(Bucket=bucket, Key=f"{directory}~marker")


def remove(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                 "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


@dataclass
class Lister:
    """One way of listing a prefix whole: `botocore` or `raw` (see the module's docstring)."""

    name: str
    target: GatewayTarget
    s3: Any

    def list(self, bucket: str, prefix: str) -> list[str]:
        if self.name == "raw":
            return list_keys_raw(self.target, bucket, prefix, LIST_PAGE)
        return list_keys(self.s3, bucket, prefix, LIST_PAGE)


def runs(listers: list[Lister], bucket: str, todo: list[Layout], count: int, gateway: Scrape, meta: Scrape | None,
         markers: bool = True) -> Iterator[Run]:
    s3 = listers[0].s3
    for layout in todo:
        for _ in range(count):
            for lister in listers:
                if markers:
                    make_cold(s3, bucket, layout)
                yield timed_listing(lister, bucket, layout, True, gateway, meta)
                yield timed_listing(lister, bucket, layout, False, gateway, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the S3 address, http://HOST:PORT (REST on the next port)")
    parser.add_argument("--gateway-key", default=os.environ.get("CHUNKFS_GATEWAY_KEY", ""), help="ID:SECRET")
    parser.add_argument("--metaserver", default="", help="HOST:PORT, to read its CPU and calls from /metrics")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--prefixes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="cold+warm listing pairs per layout")
    parser.add_argument("--bucket", default="", help="an existing bucket this script filled with --keep")
    parser.add_argument("--keep", action="store_true", help="leave the bucket and its keys")
    parser.add_argument("--no-markers", action="store_true",
                        help="no marker keys: each layout's first listing is cold only on a gateway that never read it")
    parser.add_argument("--client", action="append", choices=("botocore", "raw"),
                        help="how to list (repeatable) [default: both]")
    parser.add_argument("--json", action="store_true", help="one JSON line per listing")
    args = parser.parse_args()
    target = GatewayTarget.parse(args.gateway, args.gateway_key)
    s3 = target.s3_client()
    gateway = Scrape(f"{target.rest}/metrics")
    meta = Scrape(f"http://{args.metaserver}/metrics") if args.metaserver else None
    todo = layouts(args.keys, args.prefixes)
    bucket = args.bucket or f"chunkfs-listing-{secrets.token_hex(4)}"
    if not args.bucket:
        s3.create_bucket(Bucket=bucket)
        start = time.perf_counter()
        for layout in todo:
            put_keys(target, bucket, layout.keys)
        print(f"filled {bucket}: {sum(len(t.keys) for t in todo)} keys in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    try:
        print(f"load average {os.getloadavg()[0]:.1f} at the start", file=sys.stderr)
        listers = [Lister(name, target, s3) for name in (args.client or ["botocore", "raw"])]
        for run in runs(listers, bucket, todo, args.runs, gateway, meta, not args.no_markers):
            if args.json:
                print(json.dumps(asdict(run)), flush=True)
            else:
                calls = " ".join(f"{op}={n}" for op, n in sorted(run.meta_calls.items()))
                print(f"{run.layout:>13} {run.client:>8} {'cold' if run.cold else 'warm'}: {run.wall_s:6.2f} s wall, CPU client "
                      f"{run.client_cpu_s:.2f} s, gateway {run.gateway_cpu_s:.2f} s, metaserver {run.meta_cpu_s:.2f} s;"
                      f" metaserver calls: {calls or '-'}", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end", file=sys.stderr)
    finally:
        if not args.keep:
            remove(s3, bucket, [k for layout in todo for k in layout.keys])
        else:
            print(f"kept: --bucket {bucket}", file=sys.stderr)


if __name__ == "__main__":
    main()
