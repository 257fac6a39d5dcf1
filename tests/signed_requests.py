"""Raw HTTP requests to the daemons, signed (or not) exactly as a test wants: the tests of the
server edge send what no chunkfs client would (reused signatures, short bodies, gzip bombs)."""

from __future__ import annotations

import http.client
import socket

from chunkfs import auth


def sign_headers(secret: bytes, address: str, method: str, target: str, body: bytes = b"",
                 extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """Host, `extra`, and an X-Chunkfs-Auth over all of them and `body`."""
    headers = [("Host", address), *extra]
    return [*headers, (auth.HEADER, auth.sign(secret, method, target, address, headers, body))]


def replaced(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n.lower() == name.lower() else v) for n, v in headers]


def send(address: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"",
         timeout_s: float = 60.0) -> tuple[int, bytes]:
    """One request on a new connection, headers exactly as given (Host included); (status, body)."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw_connection(address: str, timeout_s: float = 60.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
