"""The time a change is stamped with (ctime, a directory's mtime, a trash entry's removal).

Normally the metaserver's clock. A change a client answered itself and sent later (write-behind,
`BatchOp.at_ns`) is stamped with the time that client answered it, as CephFS stamps a request
with its client's time: the client already showed that time to its programs, so another client
must see the same one, not the moment the batch was applied (up to `write_behind_s` later). A
client's time is taken only within CLIENT_PAST_S before and CLIENT_AHEAD_S after this clock, so
no client can date a change far into the past or the future (a change sent again after a long
outage, or from a host whose clock is off, gets this clock's time).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

CLIENT_PAST_S = 120.0
CLIENT_AHEAD_S = 1.0

_stamp: ContextVar[int] = ContextVar("chunkfs_change_stamp", default=0)


def now_ns() -> int:
    """The time to stamp the change being made with."""
    return _stamp.get() or time.time_ns()


def acceptable(at_ns: int) -> int:
    """`at_ns` if it is a client time the metaserver takes (see the module), else 0."""
    now = time.time_ns()
    if at_ns and now - int(CLIENT_PAST_S * 1e9) <= at_ns <= now + int(CLIENT_AHEAD_S * 1e9):
        return at_ns
    return 0


@contextlib.contextmanager
def stamped(at_ns: int) -> Iterator[None]:
    """Changes made in this block are stamped `at_ns` (0: this clock)."""
    token = _stamp.set(at_ns)
    try:
        yield
    finally:
        _stamp.reset(token)
