"""The metaservers a client knows (`HOST:PORT,HOST:PORT,...`) and which of them it calls.

With automatic failover (the metaserver's election.py) one of them is the primary and the others
are standbys, which answer every call 503 naming the primary. A client calls the address that
answered last; when a call there fails in a way that is retried (refused, timed out, 503), the
next attempt goes to the primary the answer named (unless that one just did not answer: then the
client stays and asks again), else to the next address in the list. So a
client whose primary is gone finds the new one within its `retry_s`, and one that starts on a
standby is sent on at once; a 503 saying to ask again there (`RETRY_HERE_HEADER`: a primary
waiting for its chunkservers to report) keeps it there. With one address, every attempt goes to it (as without
failover).
"""

from __future__ import annotations

import threading
import time

SUSPECT_S = 10.0
"""A metaserver that did not answer is not gone back to on a standby's word for this long: the
standby names the old primary until its lease lapses, and a client sent back to a hung one would
wait out another attempt there."""


def split_addresses(value: str) -> list[str]:
    """`a:9520,b:9520` -> ["a:9520", "b:9520"] (blanks dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


class MetaserverAddresses:
    def __init__(self, addresses: str | list[str]) -> None:
        listed = split_addresses(addresses) if isinstance(addresses, str) else list(addresses)
        if not listed:
            raise ValueError("no metaserver address given")
        self.addresses = listed
        self._current = 0
        self._lock = threading.Lock()  # the blocking API calls from several threads
        self._unanswered: dict[str, float] = {}  # address -> time.monotonic() it last did not answer
        self.switches = 0

    def __str__(self) -> str:
        return ",".join(self.addresses)

    @property
    def current(self) -> str:
        return self.addresses[self._current]

    def failed(self, address: str, primary: str | None = None, retry_here: bool = False) -> None:
        """A call to `address` failed (retried); `primary`: the address its answer (a standby's
        503) named, None when it did not answer (refused, timed out); `retry_here`: its answer
        (a 503 of a primary waiting for its chunkservers) said to ask it again:
        the client stays (moving on could take it to a hung former primary, for an attempt's
        whole time-out)."""
        if retry_here or (len(self.addresses) == 1 and not primary):
            return
        now = time.monotonic()
        with self._lock:
            if primary is None:
                self._unanswered[address] = now
            if self.addresses[self._current] != address:
                return  # another call moved on already
            if primary and primary != address:
                if now - self._unanswered.get(primary, -SUSPECT_S) < SUSPECT_S:
                    return  # the standby still names a primary that did not answer: wait here for the election
                if primary not in self.addresses:
                    self.addresses.append(primary)  # a metaserver added since this client started
                self._current = self.addresses.index(primary)
            else:
                self._current = (self._current + 1) % len(self.addresses)
            self.switches += 1
