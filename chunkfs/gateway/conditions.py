"""S3's conditional requests, decided on an object's description: If-Match, If-None-Match,
If-Modified-Since and If-Unmodified-Since on a GET or HEAD (304 or 412, in RFC 9110's order, as
S3 does), the x-amz-copy-source-if-* headers of a copy (412), and If-Match / If-None-Match on a
write (a PUT or a multipart Complete: NoSuchKey or 412)."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Mapping

from chunkfs.gateway.objects import ObjectInfo
from chunkfs.gateway.s3_errors import S3Error

PRECONDITION_FAILED = "At least one of the pre-conditions you specified did not hold"


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def etag_matches(header: str, etag: str) -> bool:
    return any(t.strip().strip('"') in ("*", etag) for t in header.split(","))


def not_modified(headers: Mapping[str, str], info: ObjectInfo) -> bool:
    """Whether a GET or HEAD of `info` is answered 304 (True) or goes on (False); raises
    PreconditionFailed for a 412."""
    modified_s = info.mtime_ns // 10**9
    if "if-match" in headers:
        if not etag_matches(headers["if-match"], info.etag):
            raise S3Error("PreconditionFailed", PRECONDITION_FAILED)
    elif (since := _since(headers.get("if-unmodified-since"))) is not None and modified_s > since:
        raise S3Error("PreconditionFailed", PRECONDITION_FAILED)
    if "if-none-match" in headers:
        return etag_matches(headers["if-none-match"], info.etag)
    return (since := _since(headers.get("if-modified-since"))) is not None and modified_s <= since


def check_copy_source(headers: Mapping[str, str], info: ObjectInfo) -> None:
    """x-amz-copy-source-if-*: PreconditionFailed unless the source `info` is as they say (an
    ETag condition decides over the date beside it, as S3 orders them)."""
    modified_s = info.mtime_ns // 10**9
    match = headers.get("x-amz-copy-source-if-match")
    none_match = headers.get("x-amz-copy-source-if-none-match")
    unmodified = _since(headers.get("x-amz-copy-source-if-unmodified-since"))
    modified = _since(headers.get("x-amz-copy-source-if-modified-since"))
    if match is not None:
        failed = not etag_matches(match, info.etag)
    else:
        failed = unmodified is not None and modified_s > unmodified
    if none_match is not None:
        failed = failed or etag_matches(none_match, info.etag)
    elif modified is not None and modified_s <= modified:
        failed = True
    if failed:
        raise S3Error("PreconditionFailed", PRECONDITION_FAILED)


def _time_s(value: str) -> float | None:
    """A time as S3 requests give it: an HTTP date in a header, ISO 8601 in a body."""
    since = _since(value)
    if since is not None:
        return since
    try:
        return datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def check_delete(expected: Mapping[str, str], current: ObjectInfo) -> None:
    """A conditional delete of `current`: PreconditionFailed unless it has the ETag, last
    modified time (to the second) and size that `expected` gives (keys "etag",
    "last-modified-time", "size", each optional)."""
    if "etag" in expected and not etag_matches(expected["etag"], current.etag):
        raise S3Error("PreconditionFailed", PRECONDITION_FAILED)
    if "last-modified-time" in expected:
        when = _time_s(expected["last-modified-time"])
        if when is None or int(when) != current.mtime_ns // 10**9:
            raise S3Error("PreconditionFailed", PRECONDITION_FAILED)
    if "size" in expected and expected["size"].strip() != str(current.size):
        raise S3Error("PreconditionFailed", PRECONDITION_FAILED)


def delete_expectations(headers: Mapping[str, str]) -> dict[str, str]:
    """What a DeleteObject's headers expect of the object (If-Match, x-amz-if-match-*)."""
    named = {"if-match": "etag", "x-amz-if-match-last-modified-time": "last-modified-time",
             "x-amz-if-match-size": "size"}
    return {field: headers[header] for header, field in named.items() if header in headers}


def write_needs_current(headers: Mapping[str, str]) -> bool:
    """Whether deciding a write's conditions needs the object there now (If-Match, or
    If-None-Match with an ETag; If-None-Match: * is decided by the exclusive create itself)."""
    return "if-match" in headers or headers.get("if-none-match", "").strip() not in ("", "*")


def check_write(headers: Mapping[str, str], current: ObjectInfo | None, resource: str) -> bool:
    """If-Match and If-None-Match of a write, given the object there now (None: none):
    NoSuchKey when If-Match names an object that is not there, PreconditionFailed when the one
    there does not match (If-Match) or does (If-None-Match). True when the write must create
    the key (If-None-Match: *)."""
    match, none_match = headers.get("if-match"), headers.get("if-none-match", "").strip()
    if match is not None:
        if current is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.", resource)
        if not etag_matches(match, current.etag):
            raise S3Error("PreconditionFailed", PRECONDITION_FAILED, resource)
    if none_match not in ("", "*") and current is not None and etag_matches(none_match, current.etag):
        raise S3Error("PreconditionFailed", PRECONDITION_FAILED, resource)
    return none_match == "*"
