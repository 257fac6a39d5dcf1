"""AWS Signature Version 4 checked on the server: in the Authorization header and in
presigned URLs (query parameters).

No maintained Python library verifies SigV4 server-side, so the canonical request is built by
botocore's own signer classes (`S3SigV4Auth`, `S3SigV4QueryAuth`: the same code that signs
every boto3/awscli request), fed with the request as received; golden tests
(tests/test_gateway_sigv4.py) pin it against AWS's documented examples. What is ours: picking
the signed headers out of the request, the key derivation, the time checks, and the error codes.

A verified request yields a `Verified`: the key it acts as, and what an `aws-chunked` body
needs to check its chunk signatures (`aws_chunked.py`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chunkfs.gateway.keys import AccessKey

SecretLookup = Callable[[str], "tuple[AccessKey, str] | None"]  # access key id -> (key, its secret)

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
MAX_PRESIGNED_EXPIRES_S = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
TIMESTAMP = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)


class AuthError(Exception):
    """A request that does not authenticate: `code` is S3's error code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class RequestToCheck:
    """What a signature covers, as the request arrived."""

    method: str
    raw_path: bytes  # percent-encoded, as on the request line
    query: list[tuple[str, str]]  # decoded, in order
    headers: list[tuple[str, str]]  # lower-case names, every value


@dataclass(frozen=True)
class Verified:
    key: AccessKey
    payload_hash: str  # x-amz-content-sha256 (or UNSIGNED-PAYLOAD for presigned URLs)
    timestamp: str  # the request's x-amz-date, e.g. 20130524T000000Z
    scope: str  # date/region/service/aws4_request
    signing_key: bytes
    seed_signature: str  # the request's signature: the first link of a chunk signature chain


@functools.lru_cache(maxsize=1024)  # a key signs all its requests of a day with one: 4 HMACs saved a request
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, string_to_sign: str) -> str:
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def canonical_request(req: RequestToCheck, signed_headers: list[str], presigned: bool) -> str:
    """The canonical request of SigV4 for `req`, made by botocore's signer."""
    values: dict[str, list[str]] = {}
    for name, value in req.headers:
        values.setdefault(name, []).append(value)
    missing = [h for h in signed_headers if h not in values]
    if missing:
        raise AuthError("AccessDenied", f"signed header {missing[0]!r} is not in the request")
    host = values.get("host", ["localhost"])[0]
    path = quote(unquote(req.raw_path.decode("latin-1")), safe="/~")
    query = [(k, v) for k, v in req.query if not (presigned and k == "X-Amz-Signature")]
    request = AWSRequest(method=req.method, url=f"http://{host}{path}",
                         headers={h: ",".join(values[h]) for h in signed_headers}, params=query)
    signer_class = S3SigV4QueryAuth if presigned else S3SigV4Auth
    signer = signer_class(Credentials("", ""), "s3", "us-east-1")
    canonical: str = signer.canonical_request(request)
    return canonical


def header_text(raw: bytes) -> str:
    """A header value as the canonical request holds it: the bytes as sent (clients send UTF-8,
    e.g. botocore a non-ASCII x-amz-meta-* value, and sign its UTF-8), kept as they are by
    surrogateescape when they are not UTF-8, so that encoding the canonical request gives them
    back."""
    return raw.decode("utf-8", "surrogateescape")


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, timestamp, scope,
                      hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()])


def _parse_credential(credential: str, credentials: SecretLookup) -> tuple[AccessKey, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise AuthError("AuthorizationHeaderMalformed", f"malformed credential {credential!r}")
    access_key_id, date, region, service = parts[:4]
    if service != "s3":
        raise AuthError("AuthorizationHeaderMalformed", f"the credential names service {service!r}, not s3")
    found = credentials(access_key_id)
    if found is None:
        raise AuthError("InvalidAccessKeyId", "the access key id you provided does not exist in our records")
    return found[0], found[1], date, region, service


def _epoch(timestamp: str) -> float:
    """Seconds since the epoch of an x-amz-date (YYYYMMDDTHHMMSSZ), parsed by hand: strptime
    was a quarter of the signature check."""
    match = TIMESTAMP.fullmatch(timestamp)
    try:
        if match is None:
            raise ValueError(timestamp)
        year, month, day, hour, minute, second = (int(field) for field in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:
        raise AuthError("AccessDenied", f"bad x-amz-date {timestamp!r}") from None


def verify(req: RequestToCheck, credentials: SecretLookup, now: float | None = None) -> Verified:
    """The key `req` is signed with; AuthError when it is not signed, or not right."""
    now = time.time() if now is None else now
    headers = dict(req.headers)
    query = dict(req.query)
    if "authorization" in headers:
        fields = _authorization_fields(headers["authorization"])
        credential, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        timestamp = headers.get("x-amz-date", "")
        if not timestamp:
            raise AuthError("AccessDenied", "a SigV4 request needs x-amz-date")
        if abs(_epoch(timestamp) - now) > MAX_SKEW_S:
            raise AuthError("RequestTimeTooSkewed",
                            "the difference between the request time and the server's time is too large")
        presigned = False
        payload = headers.get("x-amz-content-sha256", "")
        if not payload:
            raise AuthError("InvalidRequest", "missing required header x-amz-content-sha256")
    elif query.get("X-Amz-Algorithm") == ALGORITHM:
        try:
            credential, signed, signature = (query["X-Amz-Credential"], query["X-Amz-SignedHeaders"],
                                             query["X-Amz-Signature"])
            timestamp, expires_s = query["X-Amz-Date"], int(query["X-Amz-Expires"])
        except (KeyError, ValueError):
            raise AuthError("AuthorizationQueryParametersError", "incomplete presigned URL") from None
        if not 0 < expires_s <= MAX_PRESIGNED_EXPIRES_S:
            raise AuthError("AuthorizationQueryParametersError", "X-Amz-Expires must be 1 s to 7 days")
        started = _epoch(timestamp)
        if now > started + expires_s:
            raise AuthError("AccessDenied", "Request has expired")
        if started - now > MAX_SKEW_S:
            raise AuthError("AccessDenied", "Request is not valid yet")
        presigned = True
        payload = UNSIGNED_PAYLOAD
    elif "X-Amz-Credential" in query or "AWSAccessKeyId" in query or "Signature" in query:
        raise AuthError("AuthorizationQueryParametersError", "only AWS4-HMAC-SHA256 presigned URLs are accepted")
    else:
        raise AuthError("AccessDenied", "anonymous requests are not accepted: sign it with an access key")
    key, secret, date, region, service = _parse_credential(credential, credentials)
    if date != timestamp[:8]:
        raise AuthError("SignatureDoesNotMatch", "the credential's date is not the request's date")
    scope = f"{date}/{region}/{service}/aws4_request"
    canonical = canonical_request(req, signed.split(";"), presigned)
    to_sign = string_to_sign(timestamp, scope, canonical)
    key_bytes = signing_key(secret, date, region, service)
    if not hmac.compare_digest(sign(key_bytes, to_sign), signature):
        raise AuthError("SignatureDoesNotMatch",
                        "the request signature we calculated does not match the signature you provided")
    return Verified(key, payload, timestamp, scope, key_bytes, signature)


def _authorization_fields(value: str) -> dict[str, str]:
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise AuthError("InvalidRequest" if algorithm == "AWS" else "AuthorizationHeaderMalformed",
                        "only AWS4-HMAC-SHA256 (SigV4) is accepted")
    fields = {}
    for item in rest.split(","):
        name, sep, field_value = item.strip().partition("=")
        if sep:
            fields[name] = field_value
    for needed in ("Credential", "SignedHeaders", "Signature"):
        if needed not in fields:
            raise AuthError("AuthorizationHeaderMalformed", f"the authorization header has no {needed}")
    return fields
