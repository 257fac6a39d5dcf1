"""Signed HTTP with pooled keep-alive connections, time-outs and retries with backoff.

One `SignedHttp` per process talks to every server. Transient failures (connection refused,
reset, time-out, 502/503/504) are retried with exponential backoff until `retry_s` runs out;
then the caller gets `TransportError`. A 4xx with a chunkfs error body becomes `FsError`.
"""

from __future__ import annotations

import errno
import logging

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from chunkfs import auth
from chunkfs.errors import FsError, TransportError

log = logging.getLogger(__name__)

_RETRY_STATUS = {502, 503, 504}


class _Retryable(Exception):
    pass


class SignedHttp:
    def __init__(
        self,
        secret: bytes,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        retry_s: float = 15.0,
        max_connections: int = 64,
    ) -> None:
        self.secret = secret
        self.retry_s = retry_s
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | bytearray | memoryview | None = None,
        params: dict | None = None,
        headers: dict | None = None,
        retry_s: float | None = None,
    ) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_delay(self.retry_s if retry_s is None else retry_s),
            wait=wait_exponential_jitter(initial=0.05, max=2.0),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, url, content, params, headers)
        except _Retryable as exc:
            raise TransportError(f"{method} {url}: {exc}") from None
        raise AssertionError("unreachable")

    async def _once(self, method, url, content, params, headers) -> httpx.Response:
        body = bytes(content) if isinstance(content, (bytearray, memoryview)) else content
        request = self._http.build_request(method, url, content=body, params=params, headers=headers)
        request.headers[auth.HEADER] = auth.sign(self.secret, method, request.url.raw_path.decode())
        try:
            response = await self._http.send(request)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code == 401:
            raise FsError(errno.EACCES, f"{url}: the server refused the cluster secret")
        if response.status_code >= 400:
            try:
                raise FsError.from_json(response.json())
            except (ValueError, AttributeError):
                raise FsError(errno.EIO, f"{url}: HTTP {response.status_code} {response.text[:200]}") from None
        return response
