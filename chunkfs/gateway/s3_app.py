"""The S3 door: an ASGI application (Starlette requests and responses) that authenticates each
request (`sigv4.py`), picks the operation from method, path and subresource, runs it on the
caller's `ObjectStore`, and maps every error to S3's XML error document at one edge
(`_error_response`).

Path-style (`/bucket/key`) and virtual-host style (`bucket.DOMAIN/key`, when the gateway is
given its `domain`) address the same objects.
"""

from __future__ import annotations

import email.utils
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chunkfs.client.os_errors import os_error
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway import s3_xml, sigv4
from chunkfs.gateway.access import Access
from chunkfs.gateway.aws_chunked import STREAMING_FORMS, ChunkedBody
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.lifespan import serve_lifespan
from chunkfs.gateway.metrics import GatewayMetrics
from chunkfs.gateway.multipart import MultipartUploads, Upload
from chunkfs.gateway.objects import InvalidName, ObjectInfo, ObjectStore
from chunkfs.gateway.s3_errors import S3Error, from_os_error
from chunkfs.gateway.streams import RangeNotSatisfiable, parse_range, read_body

log = logging.getLogger(__name__)

MAX_KEYS = 1000
MAX_XML_BODY_BYTES = 2 << 20
UNSUPPORTED_SUBRESOURCES = ("acl", "tagging", "versioning", "policy", "cors", "lifecycle", "website", "replication", "encryption", "object-lock",
                            "retention", "legal-hold", "notification", "logging", "ownershipControls",
                            "publicAccessBlock", "accelerate", "requestPayment", "analytics", "metrics",
                            "inventory", "intelligent-tiering", "select", "restore", "torrent", "attributes")


@dataclass
class S3Call:
    """One authenticated request, addressed."""

    request: Request
    verified: sigv4.Verified
    objects: ObjectStore
    bucket: str | None
    key: str | None
    query: dict[str, str]

    @property
    def resource(self) -> str:
        return "/" + "/".join(p for p in (self.bucket, self.key) if p)


Operation = Callable[[S3Call], Awaitable[Response]]


def _query(scope: Scope) -> list[tuple[str, str]]:
    text = scope.get("query_string", b"").decode("latin-1")
    pairs = []
    for item in text.split("&") if text else ():
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


RESPONSE_OVERRIDES = {"response-content-type": "Content-Type", "response-content-language": "Content-Language",
                      "response-expires": "Expires", "response-cache-control": "Cache-Control",
                      "response-content-disposition": "Content-Disposition",
                      "response-content-encoding": "Content-Encoding"}


def _object_headers(call: S3Call, info: ObjectInfo, whole: bool = True) -> dict[str, str]:
    """The headers that describe an object: its own, the checksums stored with it when asked for
    (and the whole body is sent), and the response-* overrides of the query."""
    headers = {"ETag": f'"{info.etag}"', "Last-Modified": _http_date(info.mtime_ns), "Accept-Ranges": "bytes",
               "Content-Type": info.content_type, "Content-Length": str(info.size)}
    headers.update({f"x-amz-meta-{k}": v for k, v in info.metadata.items()})
    if whole and call.request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        headers.update({f"x-amz-checksum-{k}": v for k, v in info.checksums.items()})
    headers.update({header: call.query[name] for name, header in RESPONSE_OVERRIDES.items() if name in call.query})
    return headers


def _request_metadata(request: Request) -> tuple[str | None, dict[str, str]]:
    metadata = {k[len("x-amz-meta-"):]: v for k, v in request.headers.items() if k.startswith("x-amz-meta-")}
    return request.headers.get("content-type"), metadata


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _etag_matches(header: str, etag: str) -> bool:
    return any(t.strip().strip('"') in ("*", etag) for t in header.split(","))


def _copy_source(call: S3Call) -> tuple[str, str]:
    """The (bucket, key) of x-amz-copy-source ("/bucket/key" or "bucket/key", percent-encoded)."""
    source = unquote(call.request.headers["x-amz-copy-source"]).partition("?")[0].lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be BUCKET/KEY", call.resource)
    return bucket, key


def _part_number(call: S3Call) -> int:
    try:
        return int(call.query["partNumber"])
    except ValueError:
        raise S3Error("InvalidArgument", "Part number must be an integer", call.resource) from None


def check_conditions(request: Request, info: ObjectInfo) -> Response | None:
    """304 or 412 as RFC 9110 orders If-Match, If-Unmodified-Since, If-None-Match and
    If-Modified-Since (what S3 does); None to go on."""
    headers = request.headers
    modified_s = info.mtime_ns // 10**9
    if "if-match" in headers:
        if not _etag_matches(headers["if-match"], info.etag):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    elif (since := _since(headers.get("if-unmodified-since"))) is not None and modified_s > since:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    not_modified = Response(status_code=304, headers={"ETag": f'"{info.etag}"',
                                                      "Last-Modified": _http_date(info.mtime_ns)})
    if "if-none-match" in headers:
        if _etag_matches(headers["if-none-match"], info.etag):
            return not_modified
    elif (since := _since(headers.get("if-modified-since"))) is not None and modified_s <= since:
        return not_modified
    return None


class S3App:
    """The ASGI application of the S3 port."""

    def __init__(self, access: Access, metrics: GatewayMetrics, domain: str = "") -> None:
        self.access, self.metrics, self.domain = access, metrics, domain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        request = Request(scope, receive)
        request_id = secrets.token_hex(8).upper()
        response = await self._respond(request, request_id)
        response.headers["x-amz-request-id"] = request_id
        await response(scope, receive, send)

    def _address(self, request: Request) -> tuple[str | None, str | None]:
        path: str = request.scope["path"]
        host = request.headers.get("host", "").rsplit(":", 1)[0]
        if self.domain and host.endswith("." + self.domain):
            return host[: -len(self.domain) - 1], path[1:] or None
        bucket, _, key = path[1:].partition("/")
        return bucket or None, key or None

    async def _respond(self, request: Request, request_id: str) -> Response:
        bucket, key = self._address(request)
        operation_name = "unknown"
        call: S3Call | None = None
        try:
            query = _query(request.scope)
            checked = sigv4.RequestToCheck(request.method, request.scope.get("raw_path") or request.scope["path"].encode(),
                                           query, [(k.decode("latin-1").lower(), v.decode("latin-1"))
                                                   for k, v in request.scope["headers"]])
            verified = sigv4.verify(checked, self.access.credentials)
            call = S3Call(request, verified, self.access.objects_for(verified.key), bucket, key, dict(query))
            operation = self._operation(call)
            operation_name = operation.__name__
            with self.metrics.timed("s3", operation_name):
                return await operation(call)
        except Exception as exc:  # the one error edge of the S3 door
            error = await self._s3_error(exc, call, bucket, key)
            if error.status >= 500:
                log.error("%s %s (%s): %s", request.method, request.scope["path"], operation_name, exc,
                          exc_info=error.code == "InternalError")
            self.metrics.error("s3", operation_name, error.code)
            body = b"" if request.method == "HEAD" else error.xml(request_id)
            return Response(body, status_code=error.status, media_type="application/xml")

    async def _s3_error(self, exc: Exception, call: S3Call | None, bucket: str | None, key: str | None) -> S3Error:
        resource = "/" + "/".join(p for p in (bucket, key) if p)
        if isinstance(exc, (FsError, TransportError)):
            exc = os_error(exc)
        if isinstance(exc, ClientDisconnect):
            return S3Error("IncompleteBody", "the client went away before the end of the body", resource)
        if isinstance(exc, S3Error):
            return exc
        if isinstance(exc, sigv4.AuthError):
            return S3Error(exc.code, exc.message, resource)
        if isinstance(exc, InvalidName):
            code = "KeyTooLongError" if exc.too_long else ("InvalidArgument" if key else "InvalidBucketName")
            return S3Error(code, str(exc), resource)
        if isinstance(exc, RangeNotSatisfiable):
            return S3Error("InvalidRange", "The requested range is not satisfiable", resource)
        if isinstance(exc, OSError):
            missing = "NoSuchKey" if key else "NoSuchBucket"
            if call is not None and bucket and key and not await self._bucket_exists(call, bucket):
                missing = "NoSuchBucket"
            return from_os_error(exc, resource, missing)
        log.exception("unexpected error on %s", resource)
        return S3Error("InternalError", "We encountered an internal error. Please try again.", resource)

    @staticmethod
    async def _bucket_exists(call: S3Call, bucket: str) -> bool:
        try:
            return await call.objects.bucket_exists(bucket)
        except OSError:
            return True

    def _operation(self, call: S3Call) -> Operation:
        method, query = call.request.method, call.query
        unsupported = next((s for s in UNSUPPORTED_SUBRESOURCES if s in query), None)
        if unsupported is not None:
            raise S3Error("NotImplemented", f"?{unsupported} is not implemented by the chunkfs gateway yet",
                          call.resource)
        if call.bucket is None:
            table: dict[str, Operation] = {"GET": self.list_buckets}
        elif call.key is None:
            table = {"GET": self.get_bucket_location if "location" in query
                     else self.list_multipart_uploads if "uploads" in query
                     else self.list_object_versions if "versions" in query else self.list_objects,
                     "PUT": self.create_bucket, "HEAD": self.head_bucket, "DELETE": self.delete_bucket}
            if "delete" in query:
                table["POST"] = self.delete_objects
        elif "uploadId" in query:
            copying = "x-amz-copy-source" in call.request.headers
            table = {"PUT": self.upload_part_copy if copying else self.upload_part, "POST": self.complete_multipart, "DELETE": self.abort_multipart,
                     "GET": self.list_parts}
        elif "uploads" in query:
            table = {"POST": self.create_multipart}
        else:
            table = {"GET": self.get_object, "HEAD": self.head_object, "DELETE": self.delete_object,
                     "PUT": self.copy_object if "x-amz-copy-source" in call.request.headers else self.put_object}
        if method not in table:
            raise S3Error("MethodNotAllowed", f"{method} is not allowed on this resource", call.resource)
        return table[method]

    # ---- the service and buckets ---------------------------------------------------------------------
    async def list_buckets(self, call: S3Call) -> Response:
        body = s3_xml.list_buckets(await call.objects.list_buckets(), call.verified.key.name)
        return Response(body, media_type="application/xml")

    async def create_bucket(self, call: S3Call) -> Response:
        assert call.bucket is not None
        try:
            await call.objects.create_bucket(call.bucket)
        except FileExistsError:
            raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded "
                                                     "and you already own it.", call.resource) from None
        return Response(headers={"Location": f"/{call.bucket}"})

    async def head_bucket(self, call: S3Call) -> Response:
        assert call.bucket is not None
        if not await call.objects.bucket_exists(call.bucket):
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", call.resource)
        return Response()

    async def get_bucket_location(self, call: S3Call) -> Response:
        await self.head_bucket(call)
        return Response(s3_xml.location(), media_type="application/xml")

    async def delete_bucket(self, call: S3Call) -> Response:
        assert call.bucket is not None
        await call.objects.delete_bucket(call.bucket)
        return Response(status_code=204)

    @staticmethod
    def _max_keys(call: S3Call) -> int:
        try:
            max_keys = min(MAX_KEYS, int(call.query.get("max-keys", MAX_KEYS)))
        except ValueError:
            raise S3Error("InvalidArgument", "max-keys must be a number", call.resource) from None
        if max_keys < 0:
            raise S3Error("InvalidArgument", "max-keys must not be negative", call.resource)
        return max_keys

    async def list_objects(self, call: S3Call) -> Response:
        assert call.bucket is not None
        query = call.query
        v2 = query.get("list-type") == "2"
        max_keys = self._max_keys(call)
        if v2:
            token = query.get("continuation-token")
            after = s3_xml.after_token(token) if token is not None else query.get("start-after", "")
        else:
            after = query.get("marker", "")
        page = await call.objects.list(call.bucket, query.get("prefix", ""), query.get("delimiter", ""), after,
                                       max_keys)
        return Response(s3_xml.list_objects(call.bucket, page, query, v2, max_keys), media_type="application/xml")

    async def list_object_versions(self, call: S3Call) -> Response:
        """ListObjectVersions: buckets here are never versioned, so each object is its one version
        ("null"), paged by key-marker as ListObjects pages by marker."""
        assert call.bucket is not None
        query = call.query
        max_keys = self._max_keys(call)
        page = await call.objects.list(call.bucket, query.get("prefix", ""), query.get("delimiter", ""),
                                       query.get("key-marker", ""), max_keys)
        return Response(s3_xml.list_versions(call.bucket, page, query, max_keys, call.verified.key.name),
                        media_type="application/xml")

    async def delete_objects(self, call: S3Call) -> Response:
        assert call.bucket is not None
        body = await call.request.body()
        if len(body) > MAX_XML_BODY_BYTES:
            raise S3Error("MalformedXML", "the delete request is too large", call.resource)
        keys, quiet = s3_xml.delete_request(body)
        deleted, errors = [], []
        for key in keys:
            try:
                await call.objects.delete(call.bucket, key)
                deleted.append(key)
            except (OSError, InvalidName) as exc:
                errors.append((key, await self._s3_error(exc, call, call.bucket, key)))
        return Response(s3_xml.delete_result(deleted, errors, quiet), media_type="application/xml")

    # ---- objects -----------------------------------------------------------------------------------
    async def head_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        info = await call.objects.head(call.bucket, call.key)
        return check_conditions(call.request, info) or Response(headers=_object_headers(call, info))

    async def get_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        info, afile = await call.objects.open(call.bucket, call.key)
        try:
            early = check_conditions(call.request, info)
            byte_range = parse_range(call.request.headers.get("range"), info.size)
        except BaseException:
            await afile.aclose()
            raise
        if early is not None:
            await afile.aclose()
            return early
        headers = _object_headers(call, info, whole=byte_range is None)
        status = 200
        if byte_range is not None:
            headers["Content-Range"] = byte_range.content_range(info.size)
            headers["Content-Length"] = str(byte_range.length)
            status = 206
        return StreamingResponse(read_body(afile, byte_range, self.metrics.bytes_out), status_code=status,
                                 headers=headers)

    def _body(self, call: S3Call) -> tuple[AsyncIterator[bytes], BodyChecksums]:
        """The request's body, decoded (aws-chunked) and counted, and the checks it must pass."""
        checksums = BodyChecksums(call.request.headers)
        body: AsyncIterator[bytes] = call.request.stream()
        if call.verified.payload_hash in STREAMING_FORMS:
            body = ChunkedBody(body, call.verified, checksums).data()
        return self.metrics.counted_in(body), checksums

    async def put_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        request = call.request
        body, checksums = self._body(call)
        if "if-match" in request.headers:
            current = await call.objects.head(call.bucket, call.key)
            if not _etag_matches(request.headers["if-match"], current.etag):
                raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        exclusive = request.headers.get("if-none-match", "").strip() == "*"
        content_type, metadata = _request_metadata(request)
        try:
            info = await call.objects.put(call.bucket, call.key, body, checksums,
                                          content_type, metadata, exclusive)
        except FileExistsError:
            if not exclusive:
                raise
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          call.resource) from None
        return Response(headers={"ETag": f'"{info.etag}"'})

    async def copy_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        source_bucket, source_key = _copy_source(call)
        replace = None
        if call.request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
            replace = _request_metadata(call.request)
        elif (source_bucket, source_key) == (call.bucket, call.key):
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to "
                                            "itself without changing the object's metadata", call.resource)
        info = await call.objects.copy((source_bucket, source_key), call.bucket, call.key, replace)
        return Response(s3_xml.copy_result(info), media_type="application/xml")

    async def delete_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        await call.objects.delete(call.bucket, call.key)
        return Response(status_code=204)

    # ---- multipart uploads ---------------------------------------------------------------------------
    def _uploads(self, call: S3Call) -> MultipartUploads:
        return MultipartUploads(call.objects, self.access.afs)

    async def create_multipart(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        content_type, metadata = _request_metadata(call.request)
        upload_id = await self._uploads(call).create(call.bucket, call.key, content_type, metadata)
        return Response(s3_xml.initiate_multipart(call.bucket, call.key, upload_id), media_type="application/xml")

    async def _upload(self, call: S3Call) -> tuple[MultipartUploads, Upload]:
        assert call.bucket is not None and call.key is not None
        uploads = self._uploads(call)
        return uploads, await uploads.get(call.bucket, call.key, call.query["uploadId"])

    async def upload_part(self, call: S3Call) -> Response:
        uploads, upload = await self._upload(call)
        body, checksums = self._body(call)
        etag = await uploads.put_part(upload, _part_number(call), body, checksums)
        return Response(headers={"ETag": f'"{etag}"'})

    async def upload_part_copy(self, call: S3Call) -> Response:
        """A part copied from an object (all of it, or x-amz-copy-source-range)."""
        uploads, upload = await self._upload(call)
        number = _part_number(call)
        info, afile = await call.objects.open(*_copy_source(call))
        try:
            wanted = call.request.headers.get("x-amz-copy-source-range")
            byte_range = parse_range(wanted, info.size) if wanted else None
            if wanted and byte_range is None:
                raise S3Error("InvalidArgument", "x-amz-copy-source-range must be bytes=FIRST-LAST", call.resource)
        except BaseException:
            await afile.aclose()
            raise
        etag = await uploads.put_part(upload, number, read_body(afile, byte_range), BodyChecksums({}))
        return Response(s3_xml.copy_result(ObjectInfo("", 0, time.time_ns(), etag), "CopyPartResult"),
                        media_type="application/xml")

    async def complete_multipart(self, call: S3Call) -> Response:
        uploads, upload = await self._upload(call)
        body = await call.request.body()
        if len(body) > MAX_XML_BODY_BYTES:
            raise S3Error("MalformedXML", "the complete request is too large", call.resource)
        info = await uploads.complete(upload, s3_xml.complete_request(body))
        return Response(s3_xml.complete_result(call.resource, upload.bucket, upload.key, info.etag),
                        media_type="application/xml")

    async def abort_multipart(self, call: S3Call) -> Response:
        uploads, upload = await self._upload(call)
        await uploads.abort(upload)
        return Response(status_code=204)

    async def list_parts(self, call: S3Call) -> Response:
        uploads, upload = await self._upload(call)
        parts = [(p.number, p.etag, p.size, p.mtime_ns) for p in await uploads.parts(upload)]
        return Response(s3_xml.list_parts(upload.bucket, upload.key, upload.upload_id, parts),
                        media_type="application/xml")

    async def list_multipart_uploads(self, call: S3Call) -> Response:
        assert call.bucket is not None
        await self.head_bucket(call)
        found = await self._uploads(call).list(call.bucket, call.query.get("prefix", ""))
        return Response(s3_xml.list_uploads(call.bucket, [(u.key, u.upload_id, u.initiated_ns) for u in found]),
                        media_type="application/xml")
