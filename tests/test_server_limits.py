"""What one request may cost a server (chunkfs.httpserver's gate): compressed bodies refused
without being inflated, per-route body limits, a time-out on bodies that do not arrive, memory
given back after large requests, and log lines a request cannot forge."""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
import zlib

import pytest

from chunkfs import CHUNK_SIZE, auth
from chunkfs.log_lines import OneLinePerRecord
from conftest import _cluster, wait_until
from signed_requests import raw_connection, rss_kb, send, sign_headers
import contextlib

BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A cluster whose daemons give a request body BODY_TIMEOUT_S to arrive."""
    yield from _cluster(tmp_path_factory, up_options=("--body-timeout-s", str(BODY_TIMEOUT_S)))


@pytest.fixture(scope="module")
def secret(limited) -> bytes:
    return auth.load_secret(limited.secret_file)


def head(method: str, target: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers), f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, see_close: bool = True) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closed the connection after it: False unless
    `see_close`, which waits for the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed without an answer: {data!r}"
        data += piece
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split()[1])
    length = next(int(line.split(b":")[1]) for line in head_bytes.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += sock.recv(65536)
    if not see_close:
        return status, rest[:length], False
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    return status, rest[:length], closed


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip body of zeros, ~1/1000 of what it inflates to: gzip members of 256 MiB each, one
    after another (as `gzip -d` reads them)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    member = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    return member * (inflated_bytes // (256 << 20))


def test_gzip_bombs_are_refused_unread_and_cost_no_memory(limited, secret):
    bomb = gzip_bomb(2 << 30)
    assert len(bomb) < 3 << 20
    meta = limited.metaserver
    pid = limited.pid("metaserver")
    before_kb = rss_kb(pid)
    peak_kb = [before_kb]
    target = "/v1/fs/commit"
    headers = sign_headers(secret, meta, "POST", target, bomb,
                           (("Content-Encoding", "gzip"), ("Content-Type", "application/json")))
    answers: list[tuple[int, bytes, bool]] = []

    def bombard() -> None:
        with raw_connection(meta) as sock:
            sock.sendall(head("POST", target, headers, len(bomb)))
            answers.append(read_answer(sock))  # answered from the head: the body is never read
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(bomb)
            peak_kb[0] = max(peak_kb[0], rss_kb(pid))

    def bombard_blindly() -> None:  # all of it at once, before any answer
        with raw_connection(meta) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head("POST", target, headers, len(bomb)) + bomb)
            peak_kb[0] = max(peak_kb[0], rss_kb(pid))

    for job in (bombard, bombard_blindly):
        threads = [threading.Thread(target=job) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert [a[0] for a in answers] == [415] * 4, answers
    assert all(json.loads(a[1])["errno"] == errno.errorcode[errno.EOPNOTSUPP] and a[2] for a in answers)
    after_kb = rss_kb(pid)
    print(f"metaserver RSS before {before_kb // 1024} MB, peak seen {peak_kb[0] // 1024} MB, "
          f"after {after_kb // 1024} MB")
    assert after_kb < 300 * 1024 and peak_kb[0] < 300 * 1024


def test_a_body_over_its_routes_limit_is_refused_before_it_is_sent(limited, secret):
    meta = limited.metaserver
    big = 60 << 20  # a 60 MiB JSON list: announced, never sent
    with raw_connection(meta, timeout_s=30) as sock:
        sock.sendall(head("POST", "/v1/fs/commit", [("Host", meta), ("Content-Type", "application/json")], big))
        sock.sendall(b"[" + b"1," * 1000)
        status, body, closed = read_answer(sock)
    assert status == 413 and json.loads(body)["errno"] == "EFBIG" and closed
    chunkserver = f"127.0.0.1:{limited.port + 1}"
    with raw_connection(chunkserver, timeout_s=30) as sock:
        sock.sendall(head("PUT", "/v1/chunks/1/1", [("Host", chunkserver)], CHUNK_SIZE + 1))
        status, body, closed = read_answer(sock)
    assert status == 413 and closed


def test_a_signed_body_without_length_is_cut_at_the_limit(limited, secret):
    meta = limited.metaserver
    body = b"[" + b"1," * (9 << 20) + b"1]"  # 18 MiB: over /v1/fs/'s 16 MiB
    target = "/v1/fs/commit"
    headers = sign_headers(secret, meta, "POST", target, body)
    with raw_connection(meta) as sock:
        lines = [f"POST {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers), "Transfer-Encoding: chunked"]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for start in range(0, len(body), 1 << 20):
                piece = body[start:start + (1 << 20)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, reply, _closed = read_answer(sock)
    assert status == 413 and json.loads(reply)["errno"] == "EFBIG", reply


@pytest.mark.parametrize("server", ["metaserver", "chunkserver"])
def test_a_body_shorter_than_its_length_is_answered_and_closed_within_the_time_out(limited, secret, server):
    if server == "metaserver":
        address, method, target, extra = limited.metaserver, "POST", "/v1/fs/getattr", ()
        body = b'{"ino": 1}' + b" " * 1000
    else:
        from chunkfs.checksum import chunk_checksum
        address, method, target = f"127.0.0.1:{limited.port + 1}", "PUT", "/v1/chunks/77/1"
        body = bytes(1 << 20)
        extra = ((auth.CHECKSUM_HEADER, chunk_checksum(body)),)
    headers = sign_headers(secret, address, method, target, body, extra)
    with raw_connection(address, timeout_s=BODY_TIMEOUT_S + 30) as sock:
        sock.sendall(head(method, target, headers, len(body)))
        sock.sendall(body[:10])
        status, reply, closed = read_answer(sock)
    assert status == 408 and json.loads(reply)["errno"] == "ETIMEDOUT" and closed


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000


def dribble_until_closed(sock: socket.socket, data: bytes, give_up_s: float) -> bool:
    """Sends `data` a byte every 0.25 s (the pace is the recv's wait); True if the server closed
    the connection before all of it was sent or `give_up_s` passed."""
    sock.settimeout(0.25)
    deadline = time.monotonic() + give_up_s
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.send(bytes([byte]))
            if sock.recv(1000) == b"":
                return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


@pytest.mark.parametrize("server", ["metaserver", "chunkserver"])
def test_a_request_head_sent_a_byte_at_a_time_is_cut_after_the_time_out(limited, server):
    """Slowloris: a head that never ends holds its connection BODY_TIMEOUT_S at most, on a new
    connection and on one kept alive after an answer (the bound here is generous: a busy machine)."""
    address = limited.metaserver if server == "metaserver" else f"127.0.0.1:{limited.port + 1}"
    with raw_connection(address) as sock:
        started = time.monotonic()
        assert dribble_until_closed(sock, SLOW_HEAD, BODY_TIMEOUT_S + 20), "a slow head was not cut"
        print(f"{server}: a slow head on a new connection cut after {time.monotonic() - started:.1f} s")
    with raw_connection(address) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        status, _body, _closed = read_answer(sock, see_close=False)
        assert status == 200
        assert dribble_until_closed(sock, SLOW_HEAD, BODY_TIMEOUT_S + 20), "a slow second head was not cut"


def test_a_sender_gone_within_its_body_is_one_log_line_not_a_traceback(limited, secret):
    address = f"127.0.0.1:{limited.port + 2}"
    target = "/v1/chunks/78/1/copy"
    body = b'{"x": 1}' + b" " * 1000
    headers = sign_headers(secret, address, "POST", target, body)
    with raw_connection(address) as sock:
        sock.sendall(head("POST", target, headers, len(body)) + body[:100])
    log = limited.dir / "logs" / "cs2.log"
    wait_until(lambda: f"path={target} status=400" in log.read_text(errors="replace"), 10,
               "the hang-up logged")
    text = log.read_text(errors="replace")
    assert "errno=ECONNRESET" in text and "Traceback" not in text and "unhandled error" not in text, text


def test_memory_returns_after_large_requests(limited, secret):
    meta = limited.metaserver
    pid = limited.pid("metaserver")
    body = b"[" + b"1," * (7 << 20) + b"1]"  # 14 MiB: within the limit, not a record
    before_kb = rss_kb(pid)

    def large_request() -> None:
        target = "/v1/fs/commit"
        status, reply = send(meta, "POST", target, sign_headers(secret, meta, "POST", target, body), body)
        assert status == 400 and b"bad request body" in reply

    for _ in range(3):
        threads = [threading.Thread(target=large_request) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    wait_until(lambda: rss_kb(pid) < before_kb + 64 * 1024, 10, "metaserver RSS back within 64 MB of where it was")
    after_kb = rss_kb(pid)
    print(f"metaserver RSS before {before_kb // 1024} MB, after 12 requests of 14 MiB {after_kb // 1024} MB")


def test_a_request_cannot_forge_a_log_line(limited):
    meta = limited.metaserver
    with raw_connection(meta) as sock:
        sock.sendall(f"GET /x%0AFORGED-LINE%0D%0A HTTP/1.1\r\nHost: {meta}\r\nConnection: close\r\n\r\n".encode())
        status, _body, _closed = read_answer(sock)
    assert status == 401
    log = limited.dir / "logs" / "metaserver.log"
    wait_until(lambda: "FORGED-LINE" in log.read_text(errors="replace"), 10, "the refused request logged")
    lines = log.read_text(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith("FORGED-LINE")]
    assert [line for line in lines if "path=/x%0AFORGED-LINE%0D%0A status=401" in line]


def test_log_records_are_one_line_each_tracebacks_indented(caplog):
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "bad path %s", ("/x\nFORGED",), None)
    try:
        raise ValueError("message\nFORGED traceback line")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    OneLinePerRecord().filter(record)
    text = logging.Formatter("%(levelname)s %(message)s").format(record)
    first, *rest = text.splitlines()
    assert first == "ERROR bad path /x\\x0aFORGED"
    assert rest and all(line.startswith("  ") for line in rest)
