"""The REST door's error: an HTTP status, a code and a message, answered as JSON
`{"error": CODE, "message": ...}` at the door's one error edge (`rest_app._error`)."""

from __future__ import annotations


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
