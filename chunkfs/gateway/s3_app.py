"""The S3 door: an ASGI application (Starlette requests and responses) that authenticates each
request (`sigv4.py`), picks the operation from method, path and subresource, runs it on the
caller's `ObjectStore`, and maps every error to S3's XML error document at one edge
(`_error_response`).

Path-style (`/bucket/key`) and virtual-host style (`bucket.DOMAIN/key`, when the gateway is
given its `domain`) address the same objects.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chunkfs.client.os_errors import os_error
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway import conditions, s3_call, s3_xml, sigv4, tagging
from chunkfs.gateway.access import Access
from chunkfs.gateway.aws_chunked import STREAMING_FORMS, ChunkedBody
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.lifespan import serve_lifespan
from chunkfs.gateway.metrics import GatewayMetrics
from chunkfs.gateway.multipart import MultipartUploads, Upload
from chunkfs.gateway.objects import InvalidName, ObjectInfo
from chunkfs.gateway.s3_call import S3Call
from chunkfs.gateway.s3_errors import S3Error, from_os_error
from chunkfs.gateway.streams import RangeNotSatisfiable, read_body

log = logging.getLogger(__name__)

MAX_KEYS = 1000
MAX_XML_BODY_BYTES = 2 << 20
UNSUPPORTED_SUBRESOURCES = ("acl", "tagging", "versioning", "policy", "cors", "lifecycle", "website", "replication", "encryption", "object-lock",
                            "retention", "legal-hold", "notification", "logging", "ownershipControls",
                            "publicAccessBlock", "accelerate", "requestPayment", "analytics", "metrics",
                            "inventory", "intelligent-tiering", "select", "restore", "torrent", "attributes")
# data is stored as it comes (the chunkservers' disks are the place for encryption at rest): a
# request that asks for server-side encryption is refused rather than stored in the clear
SSE_HEADERS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-customer-algorithm",
               "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-copy-source-server-side-encryption-customer-algorithm")


Operation = Callable[[S3Call], Awaitable[Response]]


def _query(scope: Scope) -> list[tuple[str, str]]:
    text = scope.get("query_string", b"").decode("latin-1")
    pairs = []
    for item in text.split("&") if text else ():
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _delete_check(expected: dict[str, str]) -> Callable[[ObjectInfo], None] | None:
    return (lambda info: conditions.check_delete(expected, info)) if expected else None


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
            if request.method == "OPTIONS":
                s3_call.cors_preflight(request)
            query = _query(request.scope)
            checked = sigv4.RequestToCheck(request.method, request.scope.get("raw_path") or request.scope["path"].encode(),
                                           query, [(k.decode("latin-1").lower(), sigv4.header_text(v))
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
        if "tagging" in query and call.key is not None:
            return self._tagging_operation(call)
        unsupported = next((s for s in UNSUPPORTED_SUBRESOURCES if s in query), None)
        if unsupported is not None:
            raise S3Error("NotImplemented", f"?{unsupported} is not implemented by the chunkfs gateway yet",
                          call.resource)
        encryption = next((h for h in SSE_HEADERS if h in call.request.headers), None)
        if encryption is not None:
            raise S3Error("NotImplemented", f"{encryption}: server-side encryption is not implemented by the chunkfs "
                                            "gateway", call.resource)
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

    def _tagging_operation(self, call: S3Call) -> Operation:
        table: dict[str, Operation] = {"GET": self.get_object_tagging, "PUT": self.put_object_tagging,
                                       "DELETE": self.delete_object_tagging}
        if call.request.method not in table:
            raise S3Error("MethodNotAllowed", f"{call.request.method} is not allowed on this resource", call.resource)
        return table[call.request.method]

    # ---- the service and buckets ---------------------------------------------------------------------
    async def list_buckets(self, call: S3Call) -> Response:
        """ListBuckets, paged by max-buckets and continuation-token when asked."""
        buckets = await call.objects.list_buckets()
        if "continuation-token" in call.query:
            after = s3_xml.after_token(call.query["continuation-token"])
            buckets = [b for b in buckets if b[0] > after]
        next_token = None
        if "max-buckets" in call.query:
            try:
                max_buckets = int(call.query["max-buckets"])
            except ValueError:
                raise S3Error("InvalidArgument", "max-buckets must be a number", call.resource) from None
            if not 1 <= max_buckets <= 10_000:
                raise S3Error("InvalidArgument", "max-buckets must be between 1 and 10000", call.resource)
            if len(buckets) > max_buckets:
                buckets = buckets[:max_buckets]
                next_token = s3_xml.continuation_token(buckets[-1][0])
        body = s3_xml.list_buckets(buckets, call.verified.key.uid, next_token)
        return Response(body, media_type="application/xml")

    async def create_bucket(self, call: S3Call) -> Response:
        """CreateBucket; again by its owner it succeeds and changes nothing (S3 in us-east-1),
        by another user it is BucketAlreadyExists."""
        assert call.bucket is not None
        try:
            await call.objects.create_bucket(call.bucket)
        except FileExistsError:
            if await call.objects.bucket_owner(call.bucket) != call.verified.key.uid:
                raise S3Error("BucketAlreadyExists", "The requested bucket name is not available.",
                              call.resource) from None
        except PermissionError:
            if await call.objects.bucket_owner(call.bucket) is None:
                raise
            raise S3Error("BucketAlreadyExists", "The requested bucket name is not available.", call.resource) from None
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
        if query.get("allow-unordered") == "true" and query.get("delimiter"):
            raise S3Error("InvalidArgument", "allow-unordered cannot be used with a delimiter", call.resource)
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
        return Response(s3_xml.list_versions(call.bucket, page, query, max_keys), media_type="application/xml")

    async def delete_objects(self, call: S3Call) -> Response:
        assert call.bucket is not None
        body = await call.request.body()
        if len(body) > MAX_XML_BODY_BYTES:
            raise S3Error("MalformedXML", "the delete request is too large", call.resource)
        keys, quiet = s3_xml.delete_request(body)
        deleted, errors = [], []
        for key, expected in keys:
            try:
                await call.objects.delete(call.bucket, key, _delete_check(expected))
                deleted.append(key)
            except (OSError, InvalidName, S3Error) as exc:
                errors.append((key, await self._s3_error(exc, call, call.bucket, key)))
        return Response(s3_xml.delete_result(deleted, errors, quiet), media_type="application/xml")

    # ---- objects -----------------------------------------------------------------------------------
    async def head_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        info = await call.objects.head(call.bucket, call.key)
        if conditions.not_modified(call.request.headers, info):
            return s3_call.not_modified_response(info)
        _, headers, status = s3_call.selected_bytes(call, info)
        return Response(status_code=status, headers=headers)

    async def get_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        info, afile = await call.objects.open(call.bucket, call.key)
        try:
            if conditions.not_modified(call.request.headers, info):
                await afile.aclose()
                return s3_call.not_modified_response(info)
            byte_range, headers, status = s3_call.selected_bytes(call, info)
        except BaseException:
            await afile.aclose()
            raise
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
        exclusive = await s3_call.check_write_conditions(call)
        content_type, metadata, stored = s3_call.request_metadata(request)
        try:
            info = await call.objects.put(call.bucket, call.key, body, checksums,
                                          content_type, metadata, exclusive, headers=stored)
        except FileExistsError:
            if not exclusive:
                raise
            raise S3Error("PreconditionFailed", conditions.PRECONDITION_FAILED, call.resource) from None
        return Response(headers={"ETag": f'"{info.etag}"',
                                 **{f"x-amz-checksum-{k}": v for k, v in info.checksums.items()}})

    async def copy_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        source_bucket, source_key = s3_call.copy_source(call)
        replace = None
        if call.request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
            replace = s3_call.request_metadata(call.request)
        elif (source_bucket, source_key) == (call.bucket, call.key):
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to "
                                            "itself without changing the object's metadata", call.resource)
        info = await call.objects.copy((source_bucket, source_key), call.bucket, call.key, replace,
                                       lambda source: conditions.check_copy_source(call.request.headers, source))
        return Response(s3_xml.copy_result(info), media_type="application/xml")

    async def delete_object(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        await call.objects.delete(call.bucket, call.key, _delete_check(conditions.delete_expectations(call.request.headers)))
        return Response(status_code=204)

    # ---- object tags -------------------------------------------------------------------------------
    async def get_object_tagging(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        info = await call.objects.head(call.bucket, call.key)
        return Response(tagging.to_xml(info.tags), media_type="application/xml")

    async def put_object_tagging(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        body = await call.request.body()
        if len(body) > MAX_XML_BODY_BYTES:
            raise S3Error("MalformedXML", "the tagging request is too large", call.resource)
        await call.objects.set_tags(call.bucket, call.key, tagging.from_xml(body))
        return Response()

    async def delete_object_tagging(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        await call.objects.set_tags(call.bucket, call.key, "")
        return Response(status_code=204)

    # ---- multipart uploads ---------------------------------------------------------------------------
    def _uploads(self, call: S3Call) -> MultipartUploads:
        return MultipartUploads(call.objects, self.access.afs)

    async def create_multipart(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        upload_id = await self._uploads(call).create(call.bucket, call.key, s3_call.request_metadata(call.request))
        return Response(s3_xml.initiate_multipart(call.bucket, call.key, upload_id), media_type="application/xml")

    async def _upload(self, call: S3Call) -> tuple[MultipartUploads, Upload]:
        assert call.bucket is not None and call.key is not None
        uploads = self._uploads(call)
        return uploads, await uploads.get(call.bucket, call.key, call.query["uploadId"])

    async def upload_part(self, call: S3Call) -> Response:
        uploads, upload = await self._upload(call)
        body, checksums = self._body(call)
        etag = await uploads.put_part(upload, s3_call.part_number(call), body, checksums)
        return Response(headers={"ETag": f'"{etag}"'})

    async def upload_part_copy(self, call: S3Call) -> Response:
        """A part copied from an object (all of it, or x-amz-copy-source-range)."""
        uploads, upload = await self._upload(call)
        number = s3_call.part_number(call)
        info, afile = await call.objects.open(*s3_call.copy_source(call))
        try:
            conditions.check_copy_source(call.request.headers, info)
            wanted = call.request.headers.get("x-amz-copy-source-range")
            byte_range = s3_call.copy_range(call, wanted, info.size) if wanted else None
        except BaseException:
            await afile.aclose()
            raise
        etag = await uploads.put_part(upload, number, read_body(afile, byte_range), BodyChecksums({}))
        return Response(s3_xml.copy_result(ObjectInfo("", 0, time.time_ns(), etag), "CopyPartResult"),
                        media_type="application/xml")

    async def complete_multipart(self, call: S3Call) -> Response:
        assert call.bucket is not None and call.key is not None
        uploads = self._uploads(call)
        try:
            upload = await uploads.get(call.bucket, call.key, call.query["uploadId"])
        except S3Error as missing:  # completed already? Then this is a retry of that Complete
            done = await uploads.completed(call.bucket, call.key, call.query["uploadId"])
            if done is None:
                raise missing from None
            return Response(s3_xml.complete_result(call.resource, call.bucket, call.key, done.etag),
                            media_type="application/xml")
        body = await call.request.body()
        if len(body) > MAX_XML_BODY_BYTES:
            raise S3Error("MalformedXML", "the complete request is too large", call.resource)
        asked = s3_xml.complete_request(body)
        exclusive = await s3_call.check_write_conditions(call)
        info = await uploads.complete(upload, asked, exclusive)
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
