"""The XML bodies of S3's answers and the one request body it parses (DeleteObjects)."""

from __future__ import annotations

import functools
import re
import time
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from chunkfs.gateway.objects import ListedObject, ListPage, ObjectInfo
from chunkfs.gateway.s3_errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_DELETE_KEYS = 1000


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_time(ns: int) -> str:
    """ns as S3's time stamps (the seconds' part remembered: a listing's keys share few seconds,
    and strftime was a tenth of a 1,000-key page's CPU)."""
    return f"{_iso_second(ns // 1_000_000_000)}.{(ns // 1_000_000) % 1000:03d}Z"


def _tag(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def owner(uid: int) -> str:
    """An Owner element: the owner's canonical id is its uid (what a POSIX namespace knows of
    owners; each access key acts as one), also its display name."""
    return f"<Owner><ID>{uid}</ID><DisplayName>{uid}</DisplayName></Owner>"


def list_buckets(buckets: list[tuple[str, int]], uid: int, next_token: str | None) -> bytes:
    items = "".join(f"<Bucket>{_tag('Name', n)}{_tag('CreationDate', iso_time(c))}</Bucket>" for n, c in buckets)
    more = _tag("ContinuationToken", next_token) if next_token else ""
    return (f'{HEAD}<ListAllMyBucketsResult xmlns="{NS}">{owner(uid)}'
            f"<Buckets>{items}</Buckets>{more}</ListAllMyBucketsResult>").encode()


URL_SAFE = re.compile(r"[^A-Za-z0-9_.~/-]")  # what quote(key, safe="/") would change


def _key_text(key: str, encode: bool) -> str:
    """A key (or prefix) as an element's text: percent-encoded with encoding-type=url (most keys
    need nothing changed, found by one regex search instead of quote's work), else escaped."""
    if encode:
        return quote(key, safe="/") if URL_SAFE.search(key) else key
    return escape(key)


def _contents(info: ListedObject, encode: bool, with_owner: bool) -> str:
    """One object of a listing, in one string (this runs 1,000 times a page: no helper per field;
    an ETag is hex and a time stamp digits, neither needs escaping)."""
    return (f"<Contents><Key>{_key_text(info.key, encode)}</Key><LastModified>{iso_time(info.mtime_ns)}"
            f'</LastModified><ETag>"{info.etag}"</ETag><Size>{info.size}</Size>'
            f"<StorageClass>STANDARD</StorageClass>{owner(info.uid) if with_owner else ''}</Contents>")


def _version(info: ListedObject, encode: bool) -> str:
    """One object of ListObjectVersions: the only version an unversioned bucket has ("null")."""
    return (f"<Version><Key>{_key_text(info.key, encode)}</Key><VersionId>null</VersionId><IsLatest>true</IsLatest>"
            f'<LastModified>{iso_time(info.mtime_ns)}</LastModified><ETag>"{info.etag}"</ETag><Size>{info.size}'
            f"</Size><StorageClass>STANDARD</StorageClass>{owner(info.uid)}</Version>")


def _common_prefixes(page: ListPage, encode: bool) -> list[str]:
    return [f"<CommonPrefixes><Prefix>{_key_text(p, encode)}</Prefix></CommonPrefixes>" for p in page.prefixes]


def _listing_head(bucket: str, page: ListPage, params: dict[str, str], max_keys: int, encode_prefix: bool = True
                  ) -> list[str]:
    """The elements every listing starts with (`params`: the request's, echoed; ListObjects v1
    echoes its Prefix as given whatever the encoding-type, as S3 does and SDKs expect)."""
    encode = params.get("encoding-type") == "url"
    parts = [_tag("Name", bucket), f"<Prefix>{_key_text(params.get('prefix', ''), encode and encode_prefix)}</Prefix>",
             _tag("MaxKeys", max_keys), _tag("IsTruncated", "true" if page.truncated else "false")]
    if params.get("delimiter"):
        parts.append(f"<Delimiter>{_key_text(params['delimiter'], encode)}</Delimiter>")
    if encode:
        parts.append(_tag("EncodingType", "url"))
    return parts


def list_objects(bucket: str, page: ListPage, params: dict[str, str], v2: bool, max_keys: int) -> bytes:
    """ListBucketResult of ListObjects (v1) or ListObjectsV2 (`params`: the request's, echoed)."""
    encode = params.get("encoding-type") == "url"
    parts = _listing_head(bucket, page, params, max_keys, encode_prefix=v2)
    if v2:
        parts.append(_tag("KeyCount", len(page.objects) + len(page.prefixes)))
        if "continuation-token" in params:
            parts.append(_tag("ContinuationToken", params["continuation-token"]))
        if "start-after" in params:
            parts.append(f"<StartAfter>{_key_text(params['start-after'], encode)}</StartAfter>")
        if page.truncated:
            parts.append(_tag("NextContinuationToken", continuation_token(page.last)))
    else:
        parts.append(f"<Marker>{_key_text(params.get('marker', ''), encode)}</Marker>")
        if page.truncated and params.get("delimiter"):
            parts.append(f"<NextMarker>{_key_text(page.last, encode)}</NextMarker>")
    with_owner = not v2 or params.get("fetch-owner") == "true"
    parts += [_contents(o, encode, with_owner) for o in page.objects]
    parts += _common_prefixes(page, encode)
    return f'{HEAD}<ListBucketResult xmlns="{NS}">{"".join(parts)}</ListBucketResult>'.encode()


def list_versions(bucket: str, page: ListPage, params: dict[str, str], max_keys: int) -> bytes:
    """ListVersionsResult of ListObjectVersions on an unversioned bucket: each object once, as
    version "null" (what S3 answers for a bucket that never had versioning on)."""
    encode = params.get("encoding-type") == "url"
    parts = _listing_head(bucket, page, params, max_keys)
    parts += [f"<KeyMarker>{_key_text(params.get('key-marker', ''), encode)}</KeyMarker>",
              _tag("VersionIdMarker", params.get("version-id-marker", ""))]
    if page.truncated:
        parts += [f"<NextKeyMarker>{_key_text(page.last, encode)}</NextKeyMarker>",
                  "<NextVersionIdMarker>null</NextVersionIdMarker>"]
    parts += [_version(o, encode) for o in page.objects]
    parts += _common_prefixes(page, encode)
    return f'{HEAD}<ListVersionsResult xmlns="{NS}">{"".join(parts)}</ListVersionsResult>'.encode()


def continuation_token(last: str) -> str:
    return last.encode().hex()


def after_token(token: str) -> str:
    try:
        return bytes.fromhex(token).decode()
    except ValueError:
        raise S3Error("InvalidArgument", "the continuation token provided is incorrect") from None


def copy_result(info: ObjectInfo, element: str = "CopyObjectResult") -> bytes:
    """CopyObjectResult (CopyPartResult for UploadPartCopy)."""
    return (f'{HEAD}<{element} xmlns="{NS}">{_tag("LastModified", iso_time(info.mtime_ns))}'
            f'{_tag("ETag", chr(34) + info.etag + chr(34))}</{element}>').encode()


def location() -> bytes:
    return f'{HEAD}<LocationConstraint xmlns="{NS}"></LocationConstraint>'.encode()


def _local_name(tag: str) -> str:
    """An element's name without its namespace ({http://s3...}Key -> Key)."""
    return tag.rpartition("}")[2]


def delete_request(body: bytes) -> tuple[list[tuple[str, dict[str, str]]], bool]:
    """The objects a DeleteObjects body names, each a key and what its deletion expects of it
    (conditions.check_delete's "etag", "last-modified-time", "size"), and whether it asked
    for a quiet answer."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    expected_fields = {"ETag": "etag", "LastModifiedTime": "last-modified-time", "Size": "size"}
    keys = []
    for obj in root:
        if _local_name(obj.tag) != "Object":
            continue
        fields = {_local_name(el.tag): el.text or "" for el in obj}
        if "Key" in fields:
            keys.append((fields["Key"], {expected_fields[f]: v for f, v in fields.items() if f in expected_fields}))
    quiet = any(_local_name(el.tag) == "Quiet" and (el.text or "").lower() == "true" for el in root)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML", "1 to 1,000 keys can be deleted at once")
    return keys, quiet


def delete_result(deleted: list[str], errors: list[tuple[str, S3Error]], quiet: bool) -> bytes:
    parts = [] if quiet else [f"<Deleted>{_tag('Key', k)}</Deleted>" for k in deleted]
    parts += [f"<Error>{_tag('Key', k)}{_tag('Code', e.code)}{_tag('Message', e.message)}</Error>" for k, e in errors]
    return f'{HEAD}<DeleteResult xmlns="{NS}">{"".join(parts)}</DeleteResult>'.encode()


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    return (f'{HEAD}<InitiateMultipartUploadResult xmlns="{NS}">{_tag("Bucket", bucket)}{_tag("Key", key)}'
            f'{_tag("UploadId", upload_id)}</InitiateMultipartUploadResult>').encode()


def complete_request(body: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) of each part a CompleteMultipartUpload body names, in its order."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    parts = []
    for part in root:
        if _local_name(part.tag) != "Part":
            continue
        fields = {_local_name(el.tag): (el.text or "") for el in part}
        try:
            parts.append((int(fields["PartNumber"]), fields["ETag"]))
        except (KeyError, ValueError):
            raise S3Error("MalformedXML", "each Part needs a PartNumber and an ETag") from None
    return parts


def complete_result(location: str, bucket: str, key: str, etag: str) -> bytes:
    return (f'{HEAD}<CompleteMultipartUploadResult xmlns="{NS}">{_tag("Location", location)}{_tag("Bucket", bucket)}'
            f'{_tag("Key", key)}{_tag("ETag", chr(34) + etag + chr(34))}</CompleteMultipartUploadResult>').encode()


def list_parts(bucket: str, key: str, upload_id: str, parts: list[tuple[int, str, int, int]]) -> bytes:
    items = "".join(f"<Part>{_tag('PartNumber', n)}{_tag('LastModified', iso_time(m))}"
                    f"{_tag('ETag', chr(34) + e + chr(34))}{_tag('Size', s)}</Part>" for n, e, s, m in parts)
    return (f'{HEAD}<ListPartsResult xmlns="{NS}">{_tag("Bucket", bucket)}{_tag("Key", key)}'
            f'{_tag("UploadId", upload_id)}<IsTruncated>false</IsTruncated>{items}</ListPartsResult>').encode()


def list_uploads(bucket: str, uploads: list[tuple[str, str, int]]) -> bytes:
    items = "".join(f"<Upload>{_tag('Key', k)}{_tag('UploadId', u)}{_tag('Initiated', iso_time(t))}"
                    "<StorageClass>STANDARD</StorageClass></Upload>" for k, u, t in uploads)
    return (f'{HEAD}<ListMultipartUploadsResult xmlns="{NS}">{_tag("Bucket", bucket)}'
            f'<IsTruncated>false</IsTruncated>{items}</ListMultipartUploadsResult>').encode()
