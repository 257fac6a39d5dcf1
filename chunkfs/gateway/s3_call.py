"""One S3 request as the operations of `s3_app.py` read it: the call (request, verified
signature, the caller's ObjectStore, bucket, key, query) and what its headers and query say:
what to store with an object it writes, the copy source and its range, conditions on a write,
which bytes a GET or HEAD selects (a Range or a partNumber), and the headers that describe an
object in the answer."""

from __future__ import annotations

import contextlib
import email.utils
import re
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from chunkfs.gateway import conditions, sigv4, tagging
from chunkfs.gateway.objects import STORED_HEADERS, TAGGING_HEADER, ObjectInfo, ObjectStore, StoredHeaders
from chunkfs.gateway.s3_errors import S3Error
from chunkfs.gateway.streams import ByteRange, parse_range

COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


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


def http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


RESPONSE_OVERRIDES = {"response-content-type": "Content-Type", "response-content-language": "Content-Language",
                      "response-expires": "Expires", "response-cache-control": "Cache-Control",
                      "response-content-disposition": "Content-Disposition",
                      "response-content-encoding": "Content-Encoding"}


def object_headers(call: S3Call, info: ObjectInfo, whole: bool = True) -> dict[str, str]:
    """The headers that describe an object: its own, the checksums stored with it when asked for
    (and the whole body is sent), and the response-* overrides of the query."""
    headers = {"ETag": f'"{info.etag}"', "Last-Modified": http_date(info.mtime_ns), "Accept-Ranges": "bytes",
               "Content-Type": info.content_type, "Content-Length": str(info.size)}
    headers.update({f"x-amz-meta-{k}": _header_value(v) for k, v in info.metadata.items()})
    headers.update(info.headers)
    if info.tags:
        headers["x-amz-tagging-count"] = str(len(tagging.decode(info.tags)))
    if whole and call.request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        headers.update({f"x-amz-checksum-{k}": v for k, v in info.checksums.items()})
    headers.update({header: call.query[name] for name, header in RESPONSE_OVERRIDES.items() if name in call.query})
    return headers


def _utf8(header_value: str) -> str:
    """A header value as its sender meant it: the ASGI server hands headers over decoded as
    latin-1, clients send UTF-8 (a user metadata value is kept so, and the mount shows it so)."""
    return header_value.encode("latin-1").decode("utf-8", "replace")


def _header_value(text: str) -> str:
    """Text as a response header's value: as ISO-8859-1 where it can be (HTTP's own charset, what
    clients decode headers with), else its UTF-8 bytes."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        return text.encode().decode("latin-1")


def request_metadata(request: Request) -> StoredHeaders:
    """What the request says about the object it makes; its Content-Encoding without the
    aws-chunked of the transfer (S3 keeps only the object's own encodings)."""
    metadata = {k[len("x-amz-meta-"):]: _utf8(v) for k, v in request.headers.items() if k.startswith("x-amz-meta-")}
    stored = {name: request.headers[name] for name in STORED_HEADERS if name in request.headers}
    if TAGGING_HEADER in request.headers:
        stored[TAGGING_HEADER] = tagging.from_header(request.headers[TAGGING_HEADER])
    if "content-encoding" in stored:
        encodings = [e.strip() for e in stored.pop("content-encoding").split(",")]
        if kept := [e for e in encodings if e and e.lower() != "aws-chunked"]:
            stored["content-encoding"] = ", ".join(kept)
    return StoredHeaders(request.headers.get("content-type"), metadata, stored)


def copy_source(call: S3Call) -> tuple[str, str]:
    """The (bucket, key) of x-amz-copy-source ("/bucket/key" or "bucket/key", percent-encoded,
    maybe with ?versionId=: a "?" of the key itself comes encoded)."""
    source = unquote(call.request.headers["x-amz-copy-source"].partition("?")[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be BUCKET/KEY", call.resource)
    return bucket, key


def copy_range(call: S3Call, wanted: str, size: int) -> ByteRange:
    """x-amz-copy-source-range: bytes=FIRST-LAST, both within the source (no suffix or open
    range, unlike a GET's Range)."""
    match = COPY_RANGE.fullmatch(wanted.strip())
    if match is None:
        raise S3Error("InvalidArgument", "x-amz-copy-source-range must be bytes=FIRST-LAST", call.resource)
    first, last = int(match.group(1)), int(match.group(2))
    if first > last or last >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", call.resource)
    return ByteRange(first, last)


def part_number(call: S3Call) -> int:
    try:
        return int(call.query["partNumber"])
    except ValueError:
        raise S3Error("InvalidArgument", "Part number must be an integer", call.resource) from None


async def check_write_conditions(call: S3Call) -> bool:
    """conditions.check_write on the object there now, looked up only when a condition needs
    it; True when the write must create the key."""
    assert call.bucket is not None and call.key is not None
    current = None
    if conditions.write_needs_current(call.request.headers):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            current = await call.objects.head(call.bucket, call.key)
    return conditions.check_write(call.request.headers, current, call.resource)


def part_range(call: S3Call, info: ObjectInfo) -> tuple[ByteRange | None, int | None]:
    """What partNumber=N of a GET or HEAD selects: part N's bytes of an object a multipart
    upload made and how many parts it has; the whole object for part 1 of any other (or of one
    changed through a mount since, whose parts no longer add up to it)."""
    number = part_number(call)
    multipart = sum(info.part_sizes) == info.size and bool(info.part_sizes)
    sizes = info.part_sizes if multipart else [info.size]
    if not 1 <= number <= len(sizes):
        raise S3Error("InvalidPart", "The requested partnumber is not satisfiable", call.resource)
    if not multipart:
        return None, None
    start = sum(sizes[: number - 1])
    return ByteRange(start, start + sizes[number - 1] - 1), len(sizes)


def selected_bytes(call: S3Call, info: ObjectInfo) -> tuple[ByteRange | None, dict[str, str], int]:
    """The bytes a GET or HEAD asks for (a Range, or a partNumber), the headers that describe
    them and the status (206 for a part of the object)."""
    parts = None
    if "partNumber" in call.query:
        byte_range, parts = part_range(call, info)
    else:
        byte_range = parse_range(call.request.headers.get("range"), info.size)
    headers = object_headers(call, info, whole=byte_range is None)
    if parts is not None:
        headers["x-amz-mp-parts-count"] = str(parts)
    if byte_range is None:
        return None, headers, 200
    headers["Content-Range"] = byte_range.content_range(info.size)
    headers["Content-Length"] = str(byte_range.length)
    return byte_range, headers, 206


def cors_preflight(request: Request) -> None:
    """An OPTIONS request (a browser's CORS preflight, unsigned): no bucket here has a CORS
    configuration, so each is refused as S3 refuses it then (400 without an Origin)."""
    if "origin" not in request.headers:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.")


def not_modified_response(info: ObjectInfo) -> Response:
    return Response(status_code=304, headers={"ETag": f'"{info.etag}"', "Last-Modified": http_date(info.mtime_ns)})
