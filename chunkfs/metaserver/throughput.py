"""The cluster's chunk traffic over the last minutes, for the status page and `/v1/status`.

Chunkservers report in every heartbeat the bytes they read and wrote since they started;
`ThroughputHistory` turns the growth of those counters into cluster totals (a counter that went
down means the server restarted: its new value is all new traffic) and samples them every
`interval_s` into a ring holding `window_s` of history. Memory stays bounded; the history starts
empty at each metaserver start.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from chunkfs.protocol import records as r


class ThroughputHistory:
    def __init__(self, interval_s: float = 5.0, window_s: float = 900.0) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.samples: deque[r.ThroughputSample] = deque(maxlen=max(1, round(window_s / interval_s)))
        self._last: dict[str, tuple[int, int]] = {}  # server id -> (read, written) last reported
        self._read = self._written = 0  # bytes since the last sample, over all servers
        self._sampled_at = time.monotonic()

    def report(self, server_id: str, read_bytes: int, written_bytes: int) -> None:
        """A heartbeat's cumulative counters of one server."""
        last_read, last_written = self._last.get(server_id, (read_bytes, written_bytes))
        self._read += read_bytes - last_read if read_bytes >= last_read else read_bytes
        self._written += written_bytes - last_written if written_bytes >= last_written else written_bytes
        self._last[server_id] = (read_bytes, written_bytes)

    def sample(self, now: float | None = None) -> r.ThroughputSample:
        """Close the interval since the previous sample: its rates join the ring."""
        monotonic_now = time.monotonic()
        now = monotonic_now if now is None else now
        elapsed = max(now - self._sampled_at, 1e-6)
        wall = time.time() + (now - monotonic_now)
        sample = r.ThroughputSample(time=round(wall, 3), read_bytes_per_s=round(self._read / elapsed, 1),
                                    written_bytes_per_s=round(self._written / elapsed, 1))
        self.samples.append(sample)
        self._read = self._written = 0
        self._sampled_at = now
        return sample

    def snapshot(self) -> r.Throughput:
        return r.Throughput(interval_s=self.interval_s, window_s=self.window_s, samples=list(self.samples))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()
