"""Signed HTTP with pooled keep-alive connections, time-outs and retries with backoff.

One `SignedHttp` per process talks to every server. Transient failures (connection refused,
reset, time-out, 502/503/504) are retried with exponential backoff until `retry_s` runs out;
then the caller gets `TransportError`. A 4xx with a chunkfs error body becomes `FsError`.
A kept-alive connection that breaks (a server restarted) takes every idle connection to that
server with it and the call is made again at once on a new one: after a restart the first call
pays one reconnect, not a back-off per pooled connection, and the pause a client sees is the
restart plus at most the back-off's ceiling (`RETRY_WAIT_MAX_S`).

Every call carries an `X-Request-Id` (see `chunkfs.request_id`), the same on each of its retries,
and, when the id is the call's own, an `X-Chunkfs-Attempt` numbering them;
the `FsError` or `TransportError` a call ends with names it, so a client's error message can be
matched with the server's log line.

Every attempt is signed anew (`chunkfs.auth.sign`: a new nonce, so the server, which refuses a
nonce it has seen, takes a retry of a request that did arrive); the body is hashed once per call.
"""

from __future__ import annotations

import copy
import errno
import logging
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from chunkfs import auth, request_id
from chunkfs.errors import PRIMARY_HEADER, RETRY_HERE_HEADER, FsError, TransportError
from chunkfs.protocol.metaserver_addresses import MetaserverAddresses
from chunkfs.protocol.transport import HttpxTransport, Response, Transport, TransportFailure, TrioHttpTransport

log = logging.getLogger(__name__)

_RETRY_STATUS = {502, 503, 504}


# The longest wait between two attempts: once a restarted server answers, a caller waiting
# this long finds out (a dead server costs a refused connection per caller per wait; cheap).
RETRY_WAIT_MAX_S = 0.5

class _Retryable(Exception):
    def __init__(self, message: str, stale: bool = False, primary: str | None = None,
                 retry_here: bool = False) -> None:
        super().__init__(message)
        self.stale = stale  # see TransportFailure
        self.primary = primary  # a standby's 503 names the primary (metaserver_addresses.py)
        self.retry_here = retry_here  # a 503 saying to ask this server again (RETRY_HERE_HEADER)


def _why(response: Response) -> str:
    """": <message>" of a chunkfs error answer (a metaserver's 503 says why it may not answer,
    which is what a caller that gives up reads in its error), else ""."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {str(message)[:300]}" if message else ""


class SignedHttp:
    def __init__(
        self,
        secret: bytes,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        retry_s: float = 15.0,
        max_connections: int = 64,
        trio_native: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`trio_native` picks the lean HTTP/1.1-on-trio transport (trio only) over httpx (any event loop);
        `tls`: connect with TLS (chunkfs.tls: the cluster CA, this part's certificate)."""
        self.secret = secret
        self.retry_s = retry_s
        self.transport: Transport = (
            TrioHttpTransport(timeout_s, connect_timeout_s, tls=tls) if trio_native
            else HttpxTransport(timeout_s, connect_timeout_s, max_connections, tls=tls)
        )

    def signing_with(self, secret: bytes) -> SignedHttp:
        """This client signing with another key, over the same connections (closed with this one)."""
        other = copy.copy(self)
        other.secret = secret
        return other

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | bytearray | memoryview | None = None,
        params: Mapping[str, object] | None = None,
        headers: dict[str, str] | None = None,
        retry_s: float | None = None,
        call_id: tuple[str, bool] | None = None,
        servers: MetaserverAddresses | None = None,
        attempt_timeout_s: float | None = None,
    ) -> Response:
        """`call_id`: (the request id to send, whether it was never sent before), for a call the
        caller makes again under the same id after it failed (a write-behind batch).
        `servers`: the call goes to whichever of them is current at each attempt (the URL's
        HOST:PORT is not used), and a retried failure moves them on (see MetaserverAddresses);
        `attempt_timeout_s`: how long one attempt may wait for its answer (default: the
        transport's `timeout_s`)."""
        rid, new_id = call_id or request_id.for_outgoing_call_and_is_new()
        headers = {**headers, request_id.HEADER: rid} if headers else {request_id.HEADER: rid}
        parts = urlsplit(url)
        target = parts.path + (f"?{urlencode(params)}" if params else (f"?{parts.query}" if parts.query else ""))
        body = bytes(content) if isinstance(content, (bytearray, memoryview)) else content
        limit_s = self.retry_s if retry_s is None else retry_s
        started = time.monotonic()
        address = parts.netloc if servers is None else servers
        try:
            digest = auth.body_digest(method, headers.items(), body)
            try:  # the first attempt without the retry machinery: building it cost ~50 us a call
                return await self._once(method, address, target, body, digest, headers, 1 if new_id else 0,
                                        attempt_timeout_s)
            except _Retryable as exc:
                first_failure = exc
            if first_failure.stale:  # a kept-alive connection broke: reconnect once, at once
                try:
                    return await self._once(method, address, target, body, digest, headers, 2 if new_id else 0,
                                            attempt_timeout_s)
                except _Retryable as exc:
                    first_failure = exc
            return await self._retry(first_failure, limit_s - (time.monotonic() - started),
                                     method, address, target, body, digest, headers, new_id, attempt_timeout_s)
        except _Retryable as exc:
            where = url if servers is None else f"{servers}{url}"
            raise TransportError(f"{method} {where}: {exc} (request_id={rid})") from None
        except FsError as exc:
            exc.request_id = exc.request_id or rid
            raise

    async def _retry(self, first_failure: _Retryable, remaining_s: float, method: str,
                     address: str | MetaserverAddresses,
                     target: str, body: bytes | None, digest: str, headers: dict[str, str], new_id: bool,
                     attempt_timeout_s: float | None = None) -> Response:
        """The attempts after a failed first one, on the schedule a retry loop around all of
        them would keep: tenacity counts `first_failure` as its attempt 1 (without sending it
        again) and stops `remaining_s` after now, i.e. `retry_s` after the first attempt."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(max(0.0, remaining_s)),
            wait=wait_exponential_jitter(multiplier=0.05, max=RETRY_WAIT_MAX_S, jitter=0.1),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        failures = [first_failure]
        async for attempt in retrying:
            with attempt:
                if failures:
                    raise failures.pop()
                return await self._once(method, address, target, body, digest, headers,
                                        attempt.retry_state.attempt_number if new_id else 0, attempt_timeout_s)
        raise AssertionError("unreachable")

    async def _once(self, method: str, address: str | MetaserverAddresses, target: str, body: bytes | None,
                    digest: str, headers: dict[str, str], attempt: int,
                    attempt_timeout_s: float | None = None) -> Response:
        """`attempt`: which attempt under a request id of the call's own, 0 for an inherited id;
        `digest`: the body's (`auth.body_digest`); `address`: HOST:PORT, or the metaservers
        whose current one is called (and moved on if this attempt fails)."""
        if isinstance(address, str):
            return await self._send(method, address, target, body, digest, headers, attempt, attempt_timeout_s)
        server = address.current
        try:
            return await self._send(method, server, target, body, digest, headers, attempt, attempt_timeout_s)
        except _Retryable as exc:
            if not exc.stale:  # a kept-alive connection that broke is tried again there first
                address.failed(server, exc.primary, exc.retry_here)
            raise

    async def _send(self, method: str, address: str, target: str, body: bytes | None, digest: str,
                    headers: dict[str, str], attempt: int, attempt_timeout_s: float | None) -> Response:
        all_headers = [("Host", address), *headers.items()]
        if attempt:
            all_headers.append((request_id.ATTEMPT_HEADER, str(attempt)))
        all_headers.append((auth.HEADER, auth.sign(self.secret, method, target, address, all_headers, body,
                                                   digest=digest)))
        try:
            response = await self.transport.send(method, address, target, all_headers, body, attempt_timeout_s)
        except TransportFailure as exc:
            raise _Retryable(str(exc), exc.stale) from None
        if response.status_code in _RETRY_STATUS:
            raise _Retryable(f"{address}: HTTP {response.status_code}{_why(response)}",
                             primary=response.header(PRIMARY_HEADER),
                             retry_here=response.header(RETRY_HERE_HEADER) is not None)
        if response.status_code == 401:
            raise FsError(errno.EACCES, f"{address}: the server refused the cluster secret or credential")
        if response.status_code >= 400:
            try:
                raise FsError.from_json(response.json())
            except (ValueError, AttributeError):
                raise FsError(errno.EIO, f"{address}{target}: HTTP {response.status_code} {response.text[:200]}") from None
        return response
