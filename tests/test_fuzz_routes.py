"""The route fuzzer: validly signed requests with malformed values, to every route of every daemon.

Routes come from the daemons' own route tables (`fuzz_wire.every_route`), bodies from the wire
records (`fuzz_bodies`), broken on purpose: wrong types, numbers out of range, unicode and NUL,
missing and unknown fields, huge lists, bad compression headers, short bodies. A short profile runs
by default (`SHORT_REQUESTS`); its `long` variant (run by `make test-long`) sends `LONG_REQUESTS`.

It passes when no request got a 5xx (a 503 only while the cluster starts), no daemon exited, every
daemon's memory stayed under `RSS_LIMIT_MIB`, and afterwards every file written before the fuzzing
reads back identical and `chunkfs fsck` is clean (once what the fuzzer made is removed the
ordinary way: `rm -r` through the mount, `chunkfs gc`).

Those files cannot be changed by legitimate means: every number that is one of their inodes, of
their chunk ids or versions (and the root's inode, which names them) is replaced before a request
is sent, and their names are never drawn, so whatever a request does, it does to something else
(the `play/` directory the fuzzer is given, or what it makes there). Run with `-s` to see the
figures: requests per route, status counts, 5xx, RSS before, peak and after per daemon.

`test_fuzz_with_each_role_key` sends the same requests signed with each role's credential in turn
(admin, client, chunkserver, gateway) and unsigned, to a cluster running on role credentials: no
5xx, and no request reaches a handler its role may not call (`access_policy.ROUTE_ROLES`; a
chunkserver serves no role's key). It runs `ROLE_REQUESTS` a role (seconds each), and
`LONG_ROLE_REQUESTS` under `--long`.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fuzz_bodies as bodies
import fuzz_wire as wire
from chunkfs import CHUNK_SIZE, auth, credentials, httpserver
from chunkfs.checksum import chunk_checksum
from chunkfs.chunk_tokens import chunk_key, metaserver_credential
from chunkfs.metaserver import access_policy
from chunkfs.protocol import disk_check, records
from chunkfs.protocol.meta_client import CLIENT_HEADER
from chunkfs.request_id import ATTEMPT_HEADER, HEADER as REQUEST_ID_HEADER
from conftest import _cluster, chunkfs, wait_until

SHORT_REQUESTS = 400
LONG_REQUESTS = 20_000
RSS_LIMIT_MIB = 512  # per daemon, peak; a cluster at rest here takes 60-90 MiB each
STARTING_S = 15.0  # a 503 is allowed this long after the metaserver started
CLUSTER = {"up_options": ("--heartbeat-timeout-s", "3", "--client-timeout-s", "5")}

RECORD_TYPES = sorted(
    {t for module in (records, disk_check) for t in vars(module).values()
     if isinstance(t, type) and issubclass(t, msgspec.Struct) and t.__module__ == module.__name__},
    key=lambda t: t.__name__)
QUERY_NAMES = ["since", "wait_s", "client", "min_age_s", "first_bucket", "buckets", "verify", "from", "checksum",
               "base_version", "offset", "client_verifies", "standby", "history", "sync"]
JUNK_TEXT = ["", "-1", "0", "1e309", "nan", "-inf", "1" * 400, "0x10", "\u00e9", "%00", "[]", "{}", "a b"]
INFLATED_BYTES = 10 * 2**20
# gzip members in a row are one gzip stream: a body followed by this inflates by INFLATED_BYTES
SPACES_GZIP = gzip.compress(b" " * INFLATED_BYTES, compresslevel=9)
HUGE_BODY = b"[" + b"1234567890," * (8 * 2**20 // 11) + b"0]"  # 8 MiB of JSON numbers
CLIENT_IDS = ["fuzz-a", "fuzz-b", "", "\u00e9", "x" * 300, "a\tb", "\u00ff\u00fe"]


# ---- what must not change --------------------------------------------------------------------


@dataclass
class Kept:
    """The files written before the fuzzing, and every number that could name them."""

    digests: dict[Path, str]
    protected: set[int | str]  # inode, chunk and version numbers; names (of credentials) kept out of bodies


def write_kept_files(cluster) -> Kept:
    top = cluster.mnt / f"kept-{os.urandom(6).hex()}"
    top.mkdir()
    sizes = [0, 100, 70_000, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 12_345]
    digests, protected = {}, {1, os.stat(top).st_ino}
    for i, size in enumerate(sizes):
        path = top / f"f{i}-{os.urandom(4).hex()}"
        data = os.urandom(size)
        path.write_bytes(data)
        digests[path] = hashlib.sha256(data).hexdigest()
        protected.add(os.stat(path).st_ino)
        for chunk in json.loads(chunkfs("info", path, "--json").stdout)["chunks"]:
            protected.update((chunk["chunk_id"], chunk["version"]))
    return Kept(digests, protected)


def make_playground(cluster) -> list[int]:
    """A directory the fuzzer may do anything to; the inodes in it (others follow them)."""
    play = cluster.mnt / "play"
    (play / "sub").mkdir(parents=True)
    (play / "small").write_bytes(b"x" * 100)
    (play / "big").write_bytes(os.urandom(CHUNK_SIZE + 7))
    os.symlink("small", play / "link")
    return [os.stat(p).st_ino for p in (play, play / "sub", play / "small", play / "big")]


def scrub(value, protected: set):
    """`value` with every integer naming a kept file moved out of the way (and every name in
    `protected`: the cluster's own credentials, which an admin's fuzzed revoke must not hit)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        while value in protected:
            value += 1 << 20
        return value
    if isinstance(value, str):
        return value + "~" if value in protected else value
    if isinstance(value, list):
        return [scrub(v, protected) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, protected) for k, v in value.items()}
    return value


def scrub_text(text: str, protected: set[int]) -> str:
    try:
        return str(scrub(int(text), protected)) if int(text) in protected else text
    except ValueError:
        return text


# ---- requests --------------------------------------------------------------------------------


@dataclass
class Planned:
    route: wire.Route
    sender: wire.Sender
    target: str
    body: bytes
    headers: dict[str, str]
    short_by: int = 0  # bytes the body is short of its Content-Length


@dataclass
class Context:
    routes: list[wire.Route]
    metaserver: wire.Sender
    chunkservers: list[wire.Sender]
    known_ints: list[int]
    protected: set[int]
    client_ids: list[str] = field(default_factory=lambda: CLIENT_IDS)  # X-Chunkfs-Client values


def draw_ints(data, ctx: Context) -> int:
    return data.draw(st.one_of(st.sampled_from(ctx.known_ints), st.integers(min(ctx.known_ints), max(ctx.known_ints) + 5000),
                               st.sampled_from(bodies.BOUNDARY_INTS)))


def draw_query(data, ctx: Context, route: wire.Route) -> dict[str, str]:
    names = data.draw(st.lists(st.sampled_from(QUERY_NAMES), max_size=4, unique=True), label="query")
    query = {}
    for name in names:
        if name == "wait_s":  # a long poll may answer after its wait: keep it short
            query[name] = data.draw(st.sampled_from(["0", "0.1", "-5", "nan", "x", "1e-300"]))
        elif name == "from":
            query[name] = data.draw(st.sampled_from([s.address for s in ctx.chunkservers] + JUNK_TEXT))
        elif name == "client":
            query[name] = json.dumps(bodies.mutated(records.ClientReport, data))
        else:
            query[name] = data.draw(st.one_of(st.sampled_from(JUNK_TEXT), st.builds(str, st.integers(-5, 300)),
                                              st.builds(str, st.sampled_from(bodies.BOUNDARY_INTS))))
    return {k: scrub_text(v, ctx.protected) for k, v in query.items()}


def draw_path(data, ctx: Context, route: wire.Route) -> str:
    path = route.path
    for param in route.params:
        value = data.draw(st.one_of(st.builds(str, st.just(0).map(lambda _: draw_ints(data, ctx))),
                                    st.sampled_from(JUNK_TEXT)), label=param)
        path = path.replace(f"{{{param}}}", urllib.parse.quote(scrub_text(value, ctx.protected), safe=""))
    return path


def draw_json_body(data, ctx: Context, route: wire.Route) -> bytes:
    record = route.body_type or data.draw(st.sampled_from(RECORD_TYPES), label="record")
    how = data.draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "raw", "other record"]), label="how")
    if how == "raw":
        return data.draw(bodies.raw_body())
    if how == "other record":
        record = data.draw(st.sampled_from(RECORD_TYPES), label="record")
    value = data.draw(bodies.valid(record)) if how == "valid" else bodies.mutated(record, data)
    value = scrub(value, ctx.protected)
    try:
        return json.dumps(value, ensure_ascii=data.draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (ValueError, OverflowError):
        return b"{}"


def draw_chunk_body(data) -> tuple[bytes, dict[str, str]]:
    size = data.draw(st.sampled_from([0, 1, 4096, 65_537, CHUNK_SIZE + 1]))
    payload = data.draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * max(1, size // 64)
    payload = payload[:size]
    checksum = data.draw(st.sampled_from([chunk_checksum(payload), "", "0" * 32, "\u00e9", "x" * 5000]))
    return payload, {"X-Chunkfs-Checksum": checksum, "Content-Type": "application/octet-stream"}


def draw_request(data, ctx: Context) -> Planned:
    route = data.draw(st.sampled_from(ctx.routes), label="route")
    sender = ctx.metaserver if route.daemon == "metaserver" else data.draw(st.sampled_from(ctx.chunkservers))
    target = draw_path(data, ctx, route)
    query = draw_query(data, ctx, route)
    if query:
        target += "?" + urllib.parse.urlencode(query)
    headers: dict[str, str] = {}
    body = b""
    if route.method in ("POST", "PUT"):
        if route.daemon == "chunkserver" and route.method == "PUT":
            body, headers = draw_chunk_body(data)
        else:
            body = draw_json_body(data, ctx, route)
            headers["Content-Type"] = "application/json"
    client = data.draw(st.sampled_from(ctx.client_ids), label="client")
    if client:
        headers[CLIENT_HEADER] = client
    if data.draw(st.booleans()):
        headers[REQUEST_ID_HEADER] = data.draw(st.sampled_from(["req-1", "req-2", "\u00e9", "x" * 300]))
        headers[ATTEMPT_HEADER] = data.draw(st.sampled_from(["1", "2", "-1", "x"]))
    wire_damage = data.draw(st.sampled_from(["none"] * 40 + ["gzip header"] * 3 + ["gzip"] * 2 + ["gzip bomb"]
                                            + ["short"] * 3 + ["huge"]), label="wire")
    short_by = 0
    if wire_damage == "gzip header":
        headers["Content-Encoding"] = "gzip"
    elif wire_damage in ("gzip", "gzip bomb"):
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body) + (SPACES_GZIP if wire_damage == "gzip bomb" else b"")
    elif wire_damage == "huge" and route.method in ("POST", "PUT"):
        body = HUGE_BODY
    elif wire_damage == "short" and body:
        short_by = data.draw(st.sampled_from([1, 1000]))
    return Planned(route, sender, target, body, headers, short_by)


# ---- the record of a run ---------------------------------------------------------------------


@dataclass
class Tally:
    per_route: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)  # the requests answered 5xx
    first_500_per_route: dict[str, str] = field(default_factory=dict)
    no_http_reply: collections.Counter = field(default_factory=collections.Counter)  # (route, what happened)
    seconds: collections.Counter = field(default_factory=collections.Counter)  # per route
    requests: int = 0

    def add(self, planned: Planned, outcome: wire.Outcome, started_at: float) -> None:
        self.requests += 1
        self.per_route[planned.route.label] += 1
        self.statuses[outcome.status] += 1
        self.seconds[planned.route.label] += outcome.seconds
        status = outcome.status
        if isinstance(status, str):
            self.no_http_reply[(planned.route.label, status + (" (short body)" if planned.short_by else ""))] += 1
        if isinstance(status, int) and status >= 500 and not (status == 503 and started_at < STARTING_S):
            headers = {k: v if len(v) < 40 else f"{v[:20]}...({len(v)} chars)" for k, v in planned.headers.items()}
            short = f" (short by {planned.short_by})" if planned.short_by else ""
            what = (f"{status} {planned.route.method} {planned.target[:200]} headers={headers} "
                    f"body={planned.body[:300]!r}{'...' if len(planned.body) > 300 else ''}{short}")
            self.server_errors.append(what)
            self.first_500_per_route.setdefault(planned.route.label, what)


def daemon_pids(cluster) -> dict[str, int]:
    names = ["metaserver", *(f"cs{i}" for i in range(1, cluster.chunkservers + 1))]
    return {name: cluster.pid(name) for name in names}


def print_summary(tally: Tally, rss: dict[str, list[tuple[int, int]]], took_s: float) -> None:
    print(f"\n==== route fuzzer: {tally.requests} requests in {took_s:.0f} s (a shared, busy machine) ====")
    for label, count in sorted(tally.per_route.items()):
        print(f"  {count:6d}  {label}")
    print("  status counts:", dict(sorted(tally.statuses.items(), key=str)))
    print("  no HTTP reply:", dict(sorted(tally.no_http_reply.items())))
    print("  slowest routes (s in all):", ", ".join(f"{label} {s:.1f}" for label, s in tally.seconds.most_common(5)))
    print(f"  5xx (but 503 while starting): {len(tally.server_errors)}")
    for label, what in sorted(tally.first_500_per_route.items()):
        print(f"    first on {label}: {what}")
    print("  RSS MiB (before / peak / after):")
    for name, samples in rss.items():
        before, peak, after = samples[0][0], max(hwm for _, hwm in samples), samples[-1][0]
        print(f"    {name:10s} {before / 1024:7.1f} / {peak / 1024:7.1f} / {after / 1024:7.1f}")


def server_error_causes(cluster) -> collections.Counter:
    """(daemon, request, the exception that ended it) of every 500 the daemons logged."""
    causes: collections.Counter = collections.Counter()
    for log in sorted((cluster.dir / "logs").glob("*.log")):
        request, last = None, ""
        for line in [*log.read_text(errors="replace").splitlines(), "0 (end)"]:
            if line[:1].isdigit():  # a new log line ends the traceback before it
                if request is not None:
                    causes[(log.stem, request, last.strip()[:160])] += 1
                request = None
                if "unhandled error in " in line:
                    request = " ".join(line.split("unhandled error in ", 1)[1].split()[:2]).split("?")[0]
            elif line.strip():
                last = line
    return causes


def memory_of(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {name: wire.memory_kib(pid) for name, pid in pids.items()}


def drop_caches(cluster) -> None:
    """Make the reads below come from the chunkservers: the mount's chunk caches (SIGUSR1) and,
    when allowed, the kernel's page cache."""
    os.kill(cluster.pid("mount"), signal.SIGUSR1)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def clean_up_playground(cluster) -> None:
    """Remove what the fuzzer made, as a user would. (Not waiting for the deletion queue to empty:
    deletions queued for the made-up chunkservers the fuzzer registered stay queued, as they must
    for a server that may come back.)"""
    shutil.rmtree(cluster.mnt / "play")
    collect_garbage(cluster)


def collect_garbage(cluster) -> int:
    """`chunkfs gc` now; the chunk versions it queued for deletion. A chunk the fuzzer stored under
    a version one of its clients reserved is kept while that reservation lives (it may still be
    committed) and is garbage once it has ended: with the client's session, up to
    `--client-timeout-s` and a reservation sweep (30 s) after the fuzzing. So a gc just after
    the fuzzing may leave some that fsck, later, rightly finds unknown: the next gc takes them."""
    return json.loads(chunkfs("gc", "--dir", cluster.dir, "--min-age-s", "0", "--json").stdout)["versions"]


# ---- the test ------------------------------------------------------------------------------------


def send(planned: Planned) -> wire.Outcome:
    if planned.short_by:
        return planned.sender.send_short(planned.route.method, planned.target, planned.body, planned.headers,
                                         planned.short_by)
    return planned.sender.send(planned.route.method, planned.target, planned.body, planned.headers)


def fuzzing(ctx: Context, requests: int, on_reply) -> Callable[[], None]:
    """A function that sends `requests` drawn requests, calling `on_reply(planned, outcome)` after each."""

    @settings(max_examples=requests, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data):
        planned = draw_request(data, ctx)
        on_reply(planned, send(planned))

    return one_request


@pytest.mark.timeout(5400)  # for the long variant (~30 min on a busy 2-core machine); the short run takes ~1.5 min
@pytest.mark.parametrize("requests", [SHORT_REQUESTS, pytest.param(LONG_REQUESTS, marks=pytest.mark.long)],
                         ids=["short", "long"])
@pytest.mark.parametrize("fresh_cluster", [CLUSTER], indirect=True)
def test_fuzz_every_route_of_every_daemon(fresh_cluster, requests):
    c = fresh_cluster
    started = time.monotonic()
    kept = write_kept_files(c)
    known = make_playground(c)
    secret = c.secret_file.read_text().strip().encode()
    servers = [s["address"] for s in c.status()["servers"]]
    ctx = Context(wire.every_route(), wire.Sender(c.metaserver, secret),
                  # a chunkserver takes the metaserver's key (chunk_tokens.py), not the cluster secret
                  [wire.Sender(address, metaserver_credential(chunk_key(secret))) for address in servers],
                  known, kept.protected)
    pids = daemon_pids(c)
    rss = {name: [m] for name, m in memory_of(pids).items()}
    tally = Tally()

    def on_reply(planned: Planned, outcome: wire.Outcome) -> None:
        tally.add(planned, outcome, time.monotonic() - started)
        if tally.requests % 50 == 0:
            for name, m in memory_of(pids).items():  # raises if a daemon is gone
                rss[name].append(m)

    one_request = fuzzing(ctx, requests, on_reply)
    fuzz_started = time.monotonic()
    try:
        one_request()
    finally:
        for sender in (ctx.metaserver, *ctx.chunkservers):
            sender.close()
        alive = {name: os.path.exists(f"/proc/{pid}") for name, pid in pids.items()}
        if all(alive.values()):
            for name, m in memory_of(pids).items():
                rss[name].append(m)
        print_summary(tally, rss, time.monotonic() - fuzz_started)
        print(f"  the daemons' logs: {c.dir / 'logs'}")
        causes = server_error_causes(c)
        print(f"  500s by cause, from the daemons' logs ({len(causes)} kinds):")
        for (daemon, what, cause), count in sorted(causes.items()):
            print(f"    {count:4d}  {daemon} {what}: {cause}")
    assert all(alive.values()), f"daemons gone: {alive}"
    assert daemon_pids(c) == pids, "a daemon was restarted"
    peaks = {name: max(hwm for _, hwm in samples) // 1024 for name, samples in rss.items()}
    assert max(peaks.values()) < RSS_LIMIT_MIB, f"peak RSS MiB: {peaks}"
    assert not tally.server_errors, f"{len(tally.server_errors)} requests answered 5xx, e.g.\n" + \
        "\n".join(tally.first_500_per_route.values())

    drop_caches(c)
    for path, digest in kept.digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"
    clean_up_playground(c)
    last_fsck: list[str] = []

    real_servers = {f"127.0.0.1:{c.port + i}" for i in range(1, c.chunkservers + 1)}

    def fsck_clean() -> bool:
        """Clean but for the made-up chunkservers the fuzzer registered (with the secret, as any
        chunkserver may), which are down for good: every real one is up, nothing is missing,
        corrupt, unknown, under or over goal."""
        result = chunkfs("fsck", "--dir", c.dir, "--json", check=False)
        last_fsck[:] = [result.stdout[-3000:]]
        if result.returncode not in (0, 1):
            return False
        report = json.loads(result.stdout)
        disks = report["disks"]
        up = {s["address"] for s in disks["servers"].values() if s["state"] == "up"}
        if disks["unknown"]:
            unknown = [(x["chunk_id"], x["version"]) for x in disks["replicas"] if x["state"] == "unknown"]
            print(f"  fsck found {disks['unknown']} unknown replicas, e.g. {unknown[:5]}; "
                  f"gc again queued {collect_garbage(c)} versions")
        return (real_servers <= up and not report["problems"] and not disks["files"]
                and not any(disks[k] for k in ("missing", "corrupt", "unknown", "unreachable")))

    try:
        wait_until(fsck_clean, 120, "fsck clean after the fuzzing")
    finally:
        print("  the last fsck said:", *last_fsck)


# ---- every role's key in turn ------------------------------------------------------------------------

ROLE_REQUESTS = 60  # per role: seconds each on the busy 2-core test machine
LONG_ROLE_REQUESTS = 3000
FUZZED_ROLES = ("admin", "client", "chunkserver", "gateway", None)  # None: no credential (unsigned)
GATE_STATUSES = frozenset({401, 408, 413, 415})  # answers the gate (chunkfs.httpserver) gives before a handler


@dataclass
class RoleFuzzing:
    cluster: Any
    kept: Kept
    known: list[int]
    servers: list[str]
    keys: dict[str, bytes]  # role -> its credential (a secret file's content)


@pytest.fixture(scope="module")
def role_fuzzing(tmp_path_factory):
    """A cluster whose daemons run on role credentials (`up --roles`), with kept files, a
    playground and a credential of each role for the fuzzer. The cluster's own credentials'
    names are kept out of the bodies (an admin's fuzzed revoke must not stop a chunkserver)."""
    with contextlib.contextmanager(_cluster)(tmp_path_factory, chunkservers=2, goal=2,
                                             up_options=(*CLUSTER["up_options"], "--roles")) as c:
        kept = write_kept_files(c)
        known = make_playground(c)
        keys = {}
        for role in credentials.ROLES:
            out = c.root / f"fuzz-{role}.key"
            chunkfs("credentials", "add", role, f"fuzz-{role}", "--out", out, "--dir", c.dir)
            keys[role] = auth.load_secret(out)
        kept.protected.update(path.name for path in (c.dir / "credentials").iterdir())
        kept.protected.update(f"fuzz-{role}" for role in credentials.ROLES)
        yield RoleFuzzing(c, kept, known, [s["address"] for s in c.status()["servers"]], keys)


def allowed(route: wire.Route, role: str | None) -> bool:
    """Whether a request to `route` signed with a `role` key (None: unsigned) may reach its
    handler: the open paths (the status ones from loopback, status_access's default), and on the
    metaserver what `access_policy.ROUTE_ROLES` gives the role. A chunkserver serves only the
    metaserver's key and chunk tokens, no role's key."""
    if route.path in httpserver.OPEN_PATHS | httpserver.STATUS_PATHS:
        return True
    if role is None or route.daemon == "chunkserver":
        return False
    roles = access_policy.ROUTE_ROLES.get(f"{route.method} {route.template}", frozenset())
    if route.template == "/v1/fs/{op}" and route.path.rsplit("/", 1)[1] in access_policy.ADMIN_FS_OPERATIONS:
        roles = roles & access_policy.ADMIN
    return role in roles


def reached_a_handler(planned: Planned, outcome: wire.Outcome) -> bool:
    """Whether the answer came from past the gate: not a refusal of the signature, the role or
    the body's size, encoding or pace, nor the HTTP parser's 400, nor no answer at all. (A HEAD's
    403 comes without its body: no role is given a HEAD route, so it is the gate's.)"""
    status, detail = outcome.status, outcome.detail
    if not isinstance(status, int) or status in GATE_STATUSES:
        return False
    if status == 403:
        return planned.route.method != "HEAD" and b"may not call" not in detail
    if status == 400:
        return b'"errno"' in detail and b"ECONNRESET" not in detail
    if status == 503:
        return b"sign it again" not in detail
    return True


@pytest.mark.timeout(3600)
# both in make test-long: the role-key cluster's start and five roles (~85 s) do not fit the
# suite's 45-minute CI budget
@pytest.mark.parametrize("requests", [pytest.param(ROLE_REQUESTS, id="short", marks=pytest.mark.long),
                                      pytest.param(LONG_ROLE_REQUESTS, id="long", marks=pytest.mark.long)])
@pytest.mark.parametrize("role", FUZZED_ROLES, ids=lambda role: role or "no-credential")
def test_fuzz_with_each_role_key(role_fuzzing, role, requests):
    """The fuzzer's requests signed with one role's key (or none) to every route of every daemon:
    no 5xx, and no request reaches a handler its role is not allowed (ROUTE_ROLES); the kept
    files are unchanged."""
    f = role_fuzzing
    key = None if role is None else f.keys[role]
    # each role's own client ids: an id belongs to the credential that used it first (client_owners.py)
    ctx = Context(wire.every_route(), wire.Sender(f.cluster.metaserver, key),
                  [wire.Sender(address, key) for address in f.servers], f.known, f.kept.protected,
                  [f"{client}-{role}" if client.startswith("fuzz-") else client for client in CLIENT_IDS])
    pids = daemon_pids(f.cluster)
    tally = Tally()
    outside: list[str] = []
    handled = collections.Counter()

    def on_reply(planned: Planned, outcome: wire.Outcome) -> None:
        tally.add(planned, outcome, STARTING_S)  # the cluster is up: no 503 is excused
        reached = reached_a_handler(planned, outcome)
        handled[reached] += 1
        if reached and not allowed(planned.route, role):
            outside.append(f"{outcome.status} {planned.route.method} {planned.target[:150]}: {outcome.detail[:150]!r}")

    started = time.monotonic()
    try:
        fuzzing(ctx, requests, on_reply)()
    finally:
        for sender in (ctx.metaserver, *ctx.chunkservers):
            sender.close()
        print(f"\n==== {role or 'no credential'}: {tally.requests} requests in {time.monotonic() - started:.1f} s "
              f"(a shared, busy machine): {handled[True]} handled, {handled[False]} refused at the gate or "
              f"unanswered; statuses {dict(sorted(tally.statuses.items(), key=str))}")
    assert daemon_pids(f.cluster) == pids, "a daemon exited or was restarted"
    assert not tally.server_errors, f"{len(tally.server_errors)} requests answered 5xx, e.g.\n" + \
        "\n".join(tally.first_500_per_route.values())
    assert not outside, f"{len(outside)} requests reached a route outside the {role} role's:\n" + "\n".join(outside[:20])
    for path, digest in f.kept.digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"
