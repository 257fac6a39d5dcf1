"""The one place where chunkfs errors are given an errno and an HTTP status.

Servers raise `FsError(errno.X, message)`; the HTTP layer turns it into a 4xx/5xx answer with a
JSON body `{"errno": "ENOENT", "message": ...}`; the protocol client turns that body back into
the same `FsError`; the mount's edge turns it into `pyfuse3.FUSEError`. An error that came over
the wire keeps the call's `request_id` (see `chunkfs.request_id`); `str()` shows it, `message`
does not (servers pass `message` on, and `request_id` is per call).
"""

from __future__ import annotations

import errno

_HTTP_STATUS = {
    errno.ENOENT: 404,
    errno.EEXIST: 409,
    errno.ENOTEMPTY: 409,
    errno.EACCES: 403,
    errno.EPERM: 403,
    errno.EKEYEXPIRED: 403,  # a chunk token past its time (chunkfs.chunk_tokens)
    errno.ENOSPC: 507,
    errno.EIO: 500,
    errno.ESTALE: 410,
}


class FsError(Exception):
    """A failure with a POSIX meaning; `errno` is what the user's program will see."""

    def __init__(self, err: int, message: str = "", request_id: str = "") -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.message = message or errno.errorcode.get(err, str(err))
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.message} (request_id={self.request_id})" if self.request_id else self.message

    @property
    def name(self) -> str:
        return errno.errorcode.get(self.errno, "EIO")

    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.errno, 400)

    def to_json(self) -> dict:
        return {"errno": self.name, "message": self.message}

    @classmethod
    def from_json(cls, body: dict, default: int = errno.EIO) -> FsError:
        err = getattr(errno, str(body.get("errno", "")), default)
        return cls(err, str(body.get("message", "")), str(body.get("request_id", "")))


class TransportError(Exception):
    """A server could not be reached or answered garbage after all retries: EIO for users."""


class NotPrimary(FsError):
    """This metaserver may not answer the call: it is a standby, or a primary that lost its
    leader key (fenced). Answered 503, which every chunkfs client retries, trying the other
    metaservers it knows; a standby's answer names the primary (`PRIMARY_HEADER`)."""

    def __init__(self, message: str = "this metaserver is not the primary") -> None:
        super().__init__(errno.EAGAIN, message)

    def http_status(self) -> int:
        return 503


PRIMARY_HEADER = "X-Chunkfs-Primary"  # in a standby's 503: HOST:PORT of the primary it follows
RETRY_HERE_HEADER = "X-Chunkfs-Retry-Here"
"""In a 503 of a metaserver that is the one to ask, again in a moment (the primary, waiting for its
chunkservers to report after its start): a client of several metaservers does not move on to
another, which may be a hung former primary (metaserver_addresses.py)."""
RETRY_HERE = {RETRY_HERE_HEADER: "1"}
