"""Which credential each client id belongs to.

A client (a mount, the gateway's client core, the API) names itself in its calls by a random id
(`X-Chunkfs-Client`), and the metaserver keeps its leases, locks, lock waits, open-file leases
and place in the change feed under that id. The id travels in the clear without TLS, and a
credential naming another's client could release its leases, unlock its locks or acknowledge
its feed. So an id belongs to the credential that signed the first request made under it (in
this metaserver's run), and a request under it signed by another credential is refused (403
EPERM, before anything is done). The cluster secret takes the ids it uses first as any
credential does, and may also act under one another credential took (it may do everything).
An id unused for `forget_s` is forgotten (a mount polls the feed all the time, so this is one
gone away).

A restart forgets every owner: the first request under an id after it takes the id again. A
credential that knows another's id and is first after a restart takes it, and the other client
is then refused until it starts again (a new id); what it gets is no more than its own
credential allows (exports.py checks every call).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from chunkfs.auth import CLUSTER_ROLE
from chunkfs.errors import FsError

FORGET_S = 3600.0


class ClientOwners:
    def __init__(self, forget_s: float = FORGET_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.forget_s = forget_s
        self.clock = clock
        self._owners: dict[str, tuple[str, float]] = {}  # client id -> (key id, last used)
        self._sweep_at = clock() + forget_s

    def admit(self, client: str, key_id: str, role: str) -> None:
        """Let a request signed by `key_id` (of `role`) act as `client`, or FsError(EPERM)."""
        if not client:
            return
        now = self.clock()
        if now > self._sweep_at:
            self._forget_unused(now)
        owner = self._owners.get(client)
        if owner is None or owner[0] == key_id:
            self._owners[client] = (key_id, now)
        elif role != CLUSTER_ROLE:
            raise FsError(errno.EPERM, f"client id {client} is another credential's")

    def __len__(self) -> int:
        return len(self._owners)

    def _forget_unused(self, now: float) -> None:
        for client, (_key_id, used) in list(self._owners.items()):
            if now - used > self.forget_s:
                del self._owners[client]
        self._sweep_at = now + self.forget_s
