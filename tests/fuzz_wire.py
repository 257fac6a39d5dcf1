"""What the route fuzzer knows of the daemons: their routes, read from the aiohttp route tables
the daemons build (so a new route is fuzzed without a change here), the record each route
reads, how a request is signed, and how one is sent, also broken at the HTTP level.
"""

from __future__ import annotations

import http.client
import inspect
import re
import socket
import time
from dataclasses import dataclass
from types import SimpleNamespace
from unittest.mock import MagicMock
from typing import Any

from chunkfs import auth, metrics
from chunkfs.chunkserver import app as chunkserver_app
from chunkfs.chunkserver.access import ChunkKeys
from chunkfs.metaserver import accounts
from chunkfs.metaserver import app as metaserver_app
from chunkfs.protocol import records as r

TIMEOUT_S = 5.0
SHORT_BODY_WAIT_S = 0.5  # how long a short body waits for a reply before it gives up

# the ops of `/v1/fs/{op}` that are not in READS or MUTATIONS, with what they read; an op
# added to `FS_OPERATIONS` and not here is fuzzed with bodies of every record
EXTRA_OP_BODIES: dict[str, type] = {"reserve": r.ReserveReq, "dedup": r.DedupBatchReq, "release_leases": r.LeaseReq, "fsck": r.FsckReq,
                                    "lock": r.LockReq, "testlock": r.LockReq, "cancel_lock": r.LockCancelReq,
                                    "locks": r.LocksReq, "reclaim_locks": r.LockReclaimReq, "batch": r.BatchReq,
                                    "quota_check": r.InodeReq, "sharing_check": r.InodeReq}


@dataclass(frozen=True)
class Route:
    daemon: str  # "metaserver" or "chunkserver"
    method: str
    path: str  # the route's template, `{op}` filled in for the metaserver's file-system calls
    body_type: type | None  # the record its handler reads, if known
    template: str = ""  # the route's template as the daemon has it (`{op}` too)

    @property
    def label(self) -> str:
        return f"{self.daemon[0]}s {self.method} {self.path}"

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def _body_type_of(handler: Any) -> type | None:
    """The record a handler decodes its body into, as its source says (`read_body(request, T)`)."""
    try:
        source = inspect.getsource(handler)
    except (OSError, TypeError):
        return None
    match = re.search(r"read_body\(request,\s*([\w.]+)\)", source)
    if match is None:
        return None
    value: Any = inspect.getmodule(handler)
    for part in match.group(1).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, type) else None


def _routes_of(daemon: str, app: Any) -> list[Route]:
    routes = []
    for route in app.router.routes():
        template = route.resource.canonical
        if template == "/v1/accounts/{op}":
            for op, (body, _mutates, _bind) in [*accounts.OPERATIONS.items(), ("no_such_op", (None, False, None))]:
                routes.append(Route(daemon, route.method, template.replace("{op}", op), body, template))
        elif "{op}" in template:
            for op in [*sorted(metaserver_app.FS_OPERATIONS), "no_such_op"]:
                known = {**metaserver_app.READS, **metaserver_app.MUTATIONS}.get(op)
                body = known[0] if known else EXTRA_OP_BODIES.get(op)
                routes.append(Route(daemon, route.method, template.replace("{op}", op), body, template))
        else:
            routes.append(Route(daemon, route.method, template, _body_type_of(route.handler), template))
    return routes


def every_route() -> list[Route]:
    """Every route both daemons serve, from the apps they build (built here with stand-ins for
    their state, which answer anything asked: no handler runs)."""
    secret = b"0" * 32
    meta = metaserver_app.build_app(MagicMock(), secret, None)
    chunk = chunkserver_app.build_app(None, ChunkKeys(secret), None, None, None,
                                      SimpleNamespace(registry=metrics.new_registry()))
    return _routes_of("metaserver", meta) + _routes_of("chunkserver", chunk)


def signed_headers(secret: bytes | None, method: str, target: str, host: str, body: bytes,
                   headers: dict[str, str]) -> dict[str, str]:
    """The headers that make a request pass the daemons' authentication: the one place the
    fuzzer signs (through `chunkfs.auth`, as every client of the cluster does). `auth.sign` signs
    the whole request (host, chunkfs headers, body) where it takes them; the older scheme signed
    method, path and query only. No `secret`: sent unsigned."""
    if secret is None:
        return dict(headers)
    if "host" in inspect.signature(auth.sign).parameters:
        # signed as the server reads them: the bytes sent (latin-1, as http.client encodes
        # them) decoded as UTF-8 with surrogate escapes, as aiohttp does
        as_read = [(k, v.encode("latin-1").decode("utf-8", "surrogateescape")) for k, v in headers.items()]
        return {**headers, auth.HEADER: auth.sign(secret, method, target, host, as_read, body)}
    return {**headers, auth.HEADER: auth.sign(secret, method, target)}


@dataclass
class Outcome:
    status: int | str  # the HTTP status, or "timeout", "no-reply", "conn-error"
    seconds: float
    detail: bytes = b""  # the start of the answer's body (of its head too, for a short body's)


class Sender:
    """Sends requests to one daemon over a keep-alive connection, made again when it breaks."""

    def __init__(self, address: str, secret: bytes | None) -> None:
        host, port = address.rsplit(":", 1)
        self.address, self.host, self.port, self.secret = address, host, int(port), secret
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()
        signed = signed_headers(self.secret, method, target, self.address, body, headers)
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            self.conn.request(method, target, body=body if body or method in ("POST", "PUT") else None,
                              headers=signed)
            response = self.conn.getresponse()
            detail = response.read()[:300]
            status: int | str = response.status
            if response.will_close:
                self.close()
        except TimeoutError:
            self.close()
            status, detail = "timeout", b""
        except (ConnectionError, http.client.HTTPException, OSError):
            self.close()
            status, detail = "conn-error", b""
        return Outcome(status, time.monotonic() - started, detail)

    def send_short(self, method: str, target: str, body: bytes, headers: dict[str, str], missing: int) -> Outcome:
        """A request whose body is `missing` bytes shorter than its Content-Length: the server
        must neither hang on to the connection for long nor answer 5xx."""
        started = time.monotonic()
        signed = signed_headers(self.secret, method, target, self.address, body, headers)
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.address}", f"Content-Length: {len(body) + missing}",
                *(f"{k}: {v}" for k, v in signed.items()), "", ""]
        status: int | str = "no-reply"
        reply = b""
        try:
            with socket.create_connection((self.host, self.port), timeout=SHORT_BODY_WAIT_S) as sock:
                sock.sendall("\r\n".join(head).encode("latin-1") + body)
                reply = sock.recv(4096)
                if reply.startswith(b"HTTP/1.1 "):
                    status = int(reply[9:12])
        except TimeoutError:
            pass
        except (ConnectionError, OSError, ValueError):
            status = "conn-error"
        return Outcome(status, time.monotonic() - started, reply)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident set size, its peak since the process started), in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]
