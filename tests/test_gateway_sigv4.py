"""Golden tests of the gateway's SigV4 checks: AWS's own documented examples (S3 API reference,
"Signature Calculations for the Authorization Header", "Query String Authentication" and
"Transferring Payload in Multiple Chunks"), verified by chunkfs.gateway.sigv4 / aws_chunked
(which build the canonical request with botocore's signer)."""

from __future__ import annotations

import calendar
import time

import pytest
import trio

from chunkfs.gateway import sigv4
from chunkfs.gateway.aws_chunked import ChunkedBody
from chunkfs.gateway.checksums import BodyChecksums
from chunkfs.gateway.keys import AccessKey
from chunkfs.gateway.s3_errors import S3Error

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY = AccessKey("example", ACCESS_KEY, 1000, 1000, "00")
WHEN = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SCOPE = f"{ACCESS_KEY}/20130524/us-east-1/s3/aws4_request"


def lookup(access_key_id: str):
    return (KEY, SECRET) if access_key_id == ACCESS_KEY else None


def get_object_request(signature: str, range_header: str = "bytes=0-9") -> sigv4.RequestToCheck:
    return sigv4.RequestToCheck("GET", b"/test.txt", [], [
        ("host", "examplebucket.s3.amazonaws.com"), ("range", range_header),
        ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", "20130524T000000Z"),
        ("authorization", f"AWS4-HMAC-SHA256 Credential={SCOPE},"
                          f"SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature={signature}")])


GET_SIGNATURE = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_header_signature_of_the_documented_get_object():
    verified = sigv4.verify(get_object_request(GET_SIGNATURE), lookup, now=WHEN)
    assert verified.key is KEY and verified.seed_signature == GET_SIGNATURE


def test_a_changed_signed_header_or_signature_does_not_match():
    for request in (get_object_request(GET_SIGNATURE, "bytes=0-10"), get_object_request("0" * 64)):
        with pytest.raises(sigv4.AuthError) as caught:
            sigv4.verify(request, lookup, now=WHEN)
        assert caught.value.code == "SignatureDoesNotMatch"


def test_unknown_key_and_skewed_clock_and_anonymous():
    cases = [(lambda a: None, WHEN, "InvalidAccessKeyId"), (lookup, WHEN + 3600, "RequestTimeTooSkewed")]
    for credentials, now, code in cases:
        with pytest.raises(sigv4.AuthError) as caught:
            sigv4.verify(get_object_request(GET_SIGNATURE), credentials, now=now)
        assert caught.value.code == code
    with pytest.raises(sigv4.AuthError) as caught:
        sigv4.verify(sigv4.RequestToCheck("GET", b"/", [], [("host", "x")]), lookup, now=WHEN)
    assert caught.value.code == "AccessDenied"


def presigned_request(expires: str = "86400") -> sigv4.RequestToCheck:
    query = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", SCOPE),
             ("X-Amz-Date", "20130524T000000Z"), ("X-Amz-Expires", expires), ("X-Amz-SignedHeaders", "host"),
             ("X-Amz-Signature", "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")]
    return sigv4.RequestToCheck("GET", b"/test.txt", query, [("host", "examplebucket.s3.amazonaws.com")])


def test_presigned_url_of_the_documented_example_and_its_expiry():
    assert sigv4.verify(presigned_request(), lookup, now=WHEN + 60).payload_hash == "UNSIGNED-PAYLOAD"
    with pytest.raises(sigv4.AuthError) as caught:
        sigv4.verify(presigned_request(), lookup, now=WHEN + 86401)
    assert (caught.value.code, caught.value.message) == ("AccessDenied", "Request has expired")
    with pytest.raises(sigv4.AuthError) as caught:
        sigv4.verify(presigned_request("86399"), lookup, now=WHEN)
    assert caught.value.code == "SignatureDoesNotMatch"


CHUNKED_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]


def chunked_request() -> sigv4.RequestToCheck:
    return sigv4.RequestToCheck("PUT", b"/examplebucket/chunkObject.txt", [], [
        ("host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"), ("content-encoding", "aws-chunked"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), ("content-length", "66824"),
        ("x-amz-decoded-content-length", "66560"),
        ("authorization", f"AWS4-HMAC-SHA256 Credential={SCOPE},SignedHeaders=content-encoding;content-length;"
                          "host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                          f"Signature={CHUNKED_SEED}")])


def chunked_body(signatures: list[str]) -> bytes:
    sizes = [65536, 1024, 0]
    return b"".join(f"{size:x};chunk-signature={sig}\r\n".encode() + b"a" * size + b"\r\n"
                    for size, sig in zip(sizes, signatures, strict=True))


async def decode(body: bytes, verified: sigv4.Verified, checksums: BodyChecksums) -> bytes:
    async def pieces():
        for start in range(0, len(body), 1000):  # arbitrary framing, as a server hands it over
            yield body[start:start + 1000]
    return b"".join([piece async for piece in ChunkedBody(pieces(), verified, checksums).data()])


def test_signed_chunks_of_the_documented_upload():
    verified = sigv4.verify(chunked_request(), lookup, now=WHEN)
    assert trio.run(decode, chunked_body(CHUNK_SIGNATURES), verified, BodyChecksums({})) == b"a" * 66560


def test_a_broken_chunk_signature_is_refused():
    verified = sigv4.verify(chunked_request(), lookup, now=WHEN)
    broken = [CHUNK_SIGNATURES[0], "1" * 64, CHUNK_SIGNATURES[2]]
    with pytest.raises(S3Error) as caught:
        trio.run(decode, chunked_body(broken), verified, BodyChecksums({}))
    assert caught.value.code == "SignatureDoesNotMatch"


def test_unsigned_trailer_body_as_botocore_frames_it_and_a_bad_trailer():
    import io

    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

    data = b"chunkfs " * 10_000
    body = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum,
                             checksum_name="x-amz-checksum-crc32").read()
    verified = sigv4.Verified(KEY, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "", "", b"", "")
    headers = {"x-amz-trailer": "x-amz-checksum-crc32"}
    checksums = BodyChecksums(headers)
    # the door feeds the decoded bytes to the checksums (objects.store_file), as done here
    decoded = trio.run(decode, body, verified, checksums)
    checksums.update(decoded)
    assert decoded == data
    checksums.finish()
    bad = body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32:AAAA")
    checksums = BodyChecksums(headers)
    checksums.update(trio.run(decode, bad, verified, checksums))
    with pytest.raises(S3Error) as caught:
        checksums.finish()
    assert caught.value.code == "BadDigest"
