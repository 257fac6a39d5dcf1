"""Failed logins slow down further tries, per user name and per client address.

After FREE_FAILURES failures of a name within WINDOW_S (FREE_FAILURES_PER_ADDRESS from one
address: behind a NAT many people share one), each further try of that name (or from that
address) must wait a delay that doubles with every failure, up to MAX_DELAY_S; a try before the
delay has passed is refused (429, with Retry-After) without checking the password, so guessing
costs an attacker time and costs the gateway nothing. A success clears the name's failures (not
the address's: one right password does not pay for a thousand wrong ones elsewhere). Kept in
memory per gateway: a restart forgives, several gateways each count their own.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

FREE_FAILURES = 5
FREE_FAILURES_PER_ADDRESS = 20
WINDOW_S = 15 * 60
MAX_DELAY_S = 300.0
MAX_TRACKED = 100_000  # names and addresses remembered; the oldest go first


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _now(self) -> float:
        return self._clock()

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        now = self._now()
        while failures and failures[0] < now - WINDOW_S:
            failures.popleft()
        return failures

    def wait_s(self, name: str, address: str) -> float:
        """How long the caller must still wait before this try is looked at (0: go ahead)."""
        waits = []
        for key, free in ((f"user:{name}", FREE_FAILURES), (f"addr:{address}", FREE_FAILURES_PER_ADDRESS)):
            failures = self._recent(key)
            if len(failures) >= free:
                delay = min(MAX_DELAY_S, 2.0 ** (len(failures) - free))
                waits.append(failures[-1] + delay - self._now())
        return max([0.0, *waits])

    def failed(self, name: str, address: str) -> None:
        now = self._now()
        for key in (f"user:{name}", f"addr:{address}"):
            failures = self._failures.setdefault(key, deque(maxlen=64))
            self._failures.move_to_end(key)
            failures.append(now)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._failures.pop(f"user:{name}", None)
