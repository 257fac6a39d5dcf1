"""A small asyncio client of etcd's v3 API, through the JSON gateway every etcd (3.4 on) serves
next to its gRPC port (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`, ...).

Why not a library: the metaserver's leader election needs six calls (grant, keep-alive, revoke,
range, a compare-and-put transaction, status). The asyncio libraries that speak v3 (aetcd,
etcd3aio) bring grpcio and generated protobuf modules with them, tens of MB of C extension for
six calls, and python-etcd3/aioetcd3 are unmaintained. The JSON gateway is etcd's own documented
HTTP API and httpx is already what chunkfs speaks HTTP with.

Keys and values are bytes (base64 on the wire, as the gateway wants); 64-bit numbers come back as
strings and are turned into ints here. Each call goes to the endpoint that last answered, then the
others in turn; `EtcdUnavailable` means none answered within `timeout_s` each.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from chunkfs.protocol.records import EtcdMemberStatus

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1 << 20  # far more than any answer used here


class EtcdUnavailable(Exception):
    """No endpoint answered (or every one answered an error)."""


@dataclass
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(obj: dict[str, Any], name: str, default: Any = None) -> Any:
    """The gateway names fields as in the .proto (snake_case) or in camelCase, by version."""
    if name in obj:
        return obj[name]
    head, *rest = name.split("_")
    return obj.get(head + "".join(part.title() for part in rest), default)


def _key_value(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(base64.b64decode(_field(kv, "key", "")), base64.b64decode(_field(kv, "value", "")),
                    int(_field(kv, "create_revision", 0)), int(_field(kv, "mod_revision", 0)),
                    int(_field(kv, "lease", 0)))


def parse_endpoints(value: str, scheme: str = "http") -> list[str]:
    """`http://a:2379,b:2379` -> ["http://a:2379", "http://b:2379"] (`scheme` when none is given)."""
    out = []
    for item in value.split(","):
        item = item.strip().rstrip("/")
        if item:
            out.append(item if "://" in item else f"{scheme}://{item}")
    return out


class EtcdClient:
    def __init__(self, endpoints: list[str], timeout_s: float = 2.0, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: what checks the members' certificates and shows this part's (chunkfs.tls's client
        context), for members serving HTTPS; a plain http:// endpoint is refused then, so a
        cluster run with TLS never sends its election in the clear."""
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        if tls is not None and any(not e.startswith("https://") for e in endpoints):
            raise ValueError(f"with TLS every etcd endpoint is https://: {', '.join(endpoints)}")
        self.endpoints = list(endpoints)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(1.0, timeout_s)),
                                         verify=tls if tls is not None else True)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for endpoint in list(self.endpoints):
            try:
                status, first_line = await self._first_line(endpoint + path, body)
            except httpx.HTTPError as exc:
                failures.append(f"{endpoint}: {type(exc).__name__}: {exc}")
                self._demote(endpoint)
                continue
            if status != 200:
                failures.append(f"{endpoint}: HTTP {status} {first_line[:200]!r}")
                self._demote(endpoint)
                continue
            try:
                answer = json.loads(first_line)
            except ValueError:
                raise EtcdUnavailable(f"{endpoint}{path}: not JSON: {first_line[:200]!r}") from None
            if not isinstance(answer, dict) or "error" in answer:
                raise EtcdUnavailable(f"{endpoint}{path}: {answer}")
            # a streaming call (keep-alive) answers {"result": {...}} lines
            result = answer.get("result", answer)
            return result if isinstance(result, dict) else {}
        raise EtcdUnavailable("; ".join(failures))

    async def _first_line(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """The answer's status and its first line (all of it for a plain call; the first message
        of a streaming one, whose stream is then closed)."""
        async with self._client.stream("POST", url, json=body) as response:
            data = b""
            async for piece in response.aiter_bytes():
                data += piece
                if b"\n" in data or len(data) > MAX_ANSWER_BYTES:
                    break
            return response.status_code, data.split(b"\n", 1)[0]

    def _demote(self, endpoint: str) -> None:
        """Try the endpoint that failed last from now on."""
        if endpoint in self.endpoints:
            self.endpoints.remove(endpoint)
            self.endpoints.append(endpoint)

    # ---- keys -------------------------------------------------------------------------------
    async def get(self, key: bytes) -> KeyValue | None:
        answer = await self._post("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _key_value(kvs[0]) if kvs else None

    async def create(self, key: bytes, value: bytes, lease: int,
                     unchanged: tuple[bytes, int] | None = None) -> KeyValue | None:
        """Put `key` under `lease` only if it does not exist (create_revision == 0) and, with
        `unchanged=(other, mod_revision)`, only if `other` was not changed since that revision
        (0: it does not exist). The new key (its create_revision is the holder's epoch), or None
        when a condition failed."""
        compare = [{"target": "CREATE", "result": "EQUAL", "key": _b64(key), "create_revision": "0"}]
        if unchanged is not None:
            compare.append({"target": "MOD", "result": "EQUAL", "key": _b64(unchanged[0]),
                            "mod_revision": str(unchanged[1])})
        answer = await self._post("/v3/kv/txn", {
            "compare": compare,
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
        })
        if not answer.get("succeeded"):
            return None
        revision = int(_field(answer.get("header", {}), "revision", 0))
        return KeyValue(key, value, revision, revision, lease)

    async def put_if_held(self, guard: bytes, guard_create_revision: int, key: bytes, value: bytes) -> bool:
        """Put `key` only while `guard` is the key created at `guard_create_revision` (the
        leader key the caller holds): False when it is not."""
        answer = await self._post("/v3/kv/txn", {
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": _b64(guard),
                         "create_revision": str(guard_create_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
        })
        return bool(answer.get("succeeded"))

    async def delete_if_held(self, key: bytes, create_revision: int) -> bool:
        answer = await self._post("/v3/kv/txn", {
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": _b64(key),
                         "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(answer.get("succeeded"))

    # ---- leases -----------------------------------------------------------------------------
    async def grant(self, ttl_s: int) -> int:
        answer = await self._post("/v3/lease/grant", {"TTL": str(ttl_s), "ID": "0"})
        if answer.get("error"):
            raise EtcdUnavailable(f"lease grant: {answer['error']}")
        return int(answer["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Renew `lease`; its TTL from now in seconds (0: it has expired)."""
        answer = await self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self._post("/v3/lease/revoke", {"ID": str(lease)})

    # ---- health -----------------------------------------------------------------------------
    async def member_status(self) -> list[EtcdMemberStatus]:
        """Each endpoint: whether it answered, its version, whether it is the Raft leader."""
        out: list[EtcdMemberStatus] = []
        for endpoint in sorted(self.endpoints):
            try:
                status, first_line = await self._first_line(endpoint + "/v3/maintenance/status", {})
                body = json.loads(first_line) if status == 200 else {}
            except (httpx.HTTPError, ValueError) as exc:
                out.append(EtcdMemberStatus(endpoint, False, error=f"{type(exc).__name__}: {exc}"))
                continue
            if not isinstance(body, dict) or not body:
                out.append(EtcdMemberStatus(endpoint, False, error=f"HTTP {status}"))
                continue
            header = body.get("header", {})
            out.append(EtcdMemberStatus(endpoint, True, str(body.get("version", "")),
                                        _field(header, "member_id") == body.get("leader")))
        return out
