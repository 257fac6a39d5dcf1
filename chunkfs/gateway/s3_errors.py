"""S3's errors: the codes, their HTTP statuses, the XML error document, and how the client
core's OSErrors become them (the S3 door's one error edge)."""

from __future__ import annotations

import errno
from xml.sax.saxutils import escape

STATUS = {
    "AccessDenied": 403, "AuthorizationHeaderMalformed": 400, "AuthorizationQueryParametersError": 400,
    "BadDigest": 400, "BucketAlreadyExists": 409, "BucketAlreadyOwnedByYou": 409, "BucketNotEmpty": 409,
    "EntityTooLarge": 400, "IncompleteBody": 400, "InternalError": 500, "InvalidAccessKeyId": 403,
    "InvalidArgument": 400, "InvalidBucketName": 400, "InvalidDigest": 400, "InvalidRange": 416,
    "InvalidRequest": 400, "KeyTooLongError": 400, "MalformedXML": 400, "MethodNotAllowed": 405,
    "MissingContentLength": 411, "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404,
    "NotImplemented": 501, "PreconditionFailed": 412, "NotModified": 304, "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503, "SignatureDoesNotMatch": 403, "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400, "InvalidPart": 400, "InvalidPartOrder": 400,
    "EntityTooSmall": 400, "ObjectConflict": 409, "InsufficientStorage": 507,
    "InvalidTag": 400, "BadRequest": 400, "AccessForbidden": 403,
    "RequestTimeout": 400,  # a body that stopped coming (streams.STALLED_BODY_S)
    "QuotaExceeded": 507,  # a directory quota's hard limit (EDQUOT), as MinIO's bucket quotas answer
}


class S3Error(Exception):
    def __init__(self, code: str, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.resource = code, message, resource

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)

    def xml(self, request_id: str) -> bytes:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>"
                f"<Resource>{escape(self.resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
                ).encode()


def from_os_error(exc: OSError, resource: str, missing: str = "NoSuchKey") -> S3Error:
    """The S3 error for an OSError of the client core; `missing` is what ENOENT means here."""
    code = {
        errno.ENOENT: missing, errno.ENOTDIR: missing, errno.EISDIR: missing,
        errno.EACCES: "AccessDenied", errno.EPERM: "AccessDenied", errno.EROFS: "AccessDenied",
        errno.ENOTEMPTY: "BucketNotEmpty", errno.EEXIST: "ObjectConflict",
        errno.ENAMETOOLONG: "KeyTooLongError", errno.EINVAL: "InvalidArgument",
        errno.ENOSPC: "InsufficientStorage", errno.EDQUOT: "QuotaExceeded",
        errno.EIO: "ServiceUnavailable", errno.ETIMEDOUT: "ServiceUnavailable", errno.EAGAIN: "SlowDown",
        errno.EBUSY: "SlowDown",
    }.get(exc.errno or 0, "InternalError")
    return S3Error(code, exc.strerror or str(exc), resource)
