"""Which metaserver a chunkserver obeys when the primary is elected (chunkfs/metaserver/election.py).

Each primary has an epoch: the create_revision of the etcd leader key it holds (0 without etcd),
higher for every later primary. The metaserver sends its epoch with every request it signs that
changes what a chunkserver holds (`EPOCH_HEADER` on a DELETE or a copy, signed with the rest of
the request) and with every answer to a heartbeat (`HelloReply.epoch`). The chunkserver keeps the
highest epoch it has seen and refuses such a request of a lower one (ESTALE, 410), and ignores
the deletions an answer of a lower one lists: a former primary woken from a hang past its lease
(a SIGSTOP, a stalled VM) cannot remove or place chunks behind the new primary's back, even in
the moment before it notices it lost its key. A request made with a client's chunk token carries
no epoch and is not checked (the token is the metaserver's word, and a fenced metaserver issues
none: it answers no call).

Kept in memory: after a restart the chunkserver learns the epoch from its first heartbeat's
answer again (until then a request of any epoch is obeyed, as before failover existed).
"""

from __future__ import annotations

import errno
import logging

from aiohttp import web

from chunkfs import chunk_tokens
from chunkfs.errors import FsError
from chunkfs.protocol.chunk_client import EPOCH_HEADER
from chunkfs.protocol.limits import MAX_ID
from chunkfs.request_checks import parse_int

log = logging.getLogger(__name__)


class Fence:
    def __init__(self) -> None:
        self.epoch = 0  # the highest primary's epoch seen
        self.refused = 0  # requests of an older primary refused

    def learn(self, epoch: int) -> bool:
        """Note an epoch the metaserver answered with; False when it is older than one seen."""
        if epoch < self.epoch:
            return False
        if epoch > self.epoch:
            if self.epoch:
                log.warning("a new primary metaserver (epoch %d, after %d): requests of older ones are refused",
                            epoch, self.epoch)
            self.epoch = epoch
        return True

    def admit(self, request: web.Request) -> None:
        """Raise ESTALE for a signed request of a primary older than the newest one seen."""
        if chunk_tokens.TOKEN_HEADER in request.headers:
            return
        epoch = parse_int(request.headers.get(EPOCH_HEADER, "0"), EPOCH_HEADER, 0, MAX_ID)
        if not self.learn(epoch):
            self.refused += 1
            log.error("refused %s %s of a former primary metaserver (epoch %d; the primary's is %d)",
                      request.method, request.path, epoch, self.epoch)
            raise FsError(errno.ESTALE, f"fenced: epoch {epoch} is older than the primary's ({self.epoch})")


FENCE = web.AppKey("fence", Fence)
