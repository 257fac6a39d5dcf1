"""Object tags (PutObjectTagging, GetObjectTagging, DeleteObjectTagging, x-amz-tagging on a
PUT or a multipart upload): at most 10 a key, keys of 1-128 and values of up to 256
characters, kept in the object's `user.s3.tagging` xattr as the URL-encoded form the
x-amz-tagging header uses (`k1=v1&k2=v2`, sorted by key), which the mount sees too."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from chunkfs.gateway.s3_errors import S3Error

MAX_TAGS = 10
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _checked(pairs: list[tuple[str, str]]) -> dict[str, str]:
    tags = dict(pairs)
    if len(tags) != len(pairs):
        raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
    if len(tags) > MAX_TAGS:
        raise S3Error("InvalidTag", f"Object tags cannot be greater than {MAX_TAGS}")
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            raise S3Error("InvalidTag", f"The TagKey you have provided is invalid: 1 to {MAX_KEY_CHARS} characters")
        if len(value) > MAX_VALUE_CHARS:
            raise S3Error("InvalidTag", f"The TagValue you have provided is invalid: up to {MAX_VALUE_CHARS} characters")
    return tags


def encode(tags: dict[str, str]) -> str:
    """The stored form: URL-encoded, sorted by key."""
    return urlencode(sorted(tags.items()))


def decode(stored: str) -> dict[str, str]:
    return dict(parse_qsl(stored, keep_blank_values=True))


def from_header(value: str) -> str:
    """An x-amz-tagging header (`k1=v1&k2`), checked, in the stored form."""
    return encode(_checked(parse_qsl(value, keep_blank_values=True)))


def from_xml(body: bytes) -> str:
    """A PutObjectTagging body (Tagging/TagSet/Tag/{Key,Value}), checked, in the stored form."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    pairs = []
    for tag in root.iter():
        if tag.tag.rpartition("}")[2] != "Tag":
            continue
        fields = {child.tag.rpartition("}")[2]: child.text or "" for child in tag}
        if "Key" not in fields:
            raise S3Error("MalformedXML", "each Tag needs a Key")
        pairs.append((fields["Key"], fields.get("Value", "")))
    return encode(_checked(pairs))


def to_xml(stored: str) -> bytes:
    """The GetObjectTagging answer."""
    tags = "".join(f"<Tag><Key>{escape(k)}</Key><Value>{escape(v)}</Value></Tag>" for k, v in decode(stored).items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Tagging xmlns="{NS}"><TagSet>{tags}</TagSet>'
            "</Tagging>").encode()
