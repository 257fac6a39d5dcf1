"""How long a long randomized test may run. Run whole, the long model runs, fuzzers and the file
exerciser took from a quarter of an hour to well over an hour each on the shared 2-core machine
(more under load), so a `make test-long` never finished. Given a budget (`--long-budget-s`, the
Makefile's LONG_BUDGET_S), such a test does its examples (model sequences, fuzzed requests,
exerciser operations) in batches and starts no new batch once the budget is spent: it ends within
its budget plus one batch, and prints how many it did of how many. A batch is never cut short,
and one that fails fails the test as the single run did (Hypothesis shrinks within the batch).

What a test proves stays what it was (each example is checked as before); the budget only says
how many random examples it gets. Without the option, or for a test not marked `long`, there is
no budget: one run of every example, exactly as before (the suite's derandomized short runs stay
the same sequences)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class LongBudget:
    seconds: float | None  # None: no budget, every example in one run
    tell: Callable[[str], None] = field(default=print)  # where the count done goes (conftest: the run's summary)

    def share(self, parts: int) -> LongBudget:
        """The budget of one of `parts` tests that share this one (the role fuzzer's roles)."""
        return self if self.seconds is None else replace(self, seconds=self.seconds / parts)

    def run(self, total: int, batch: int, run_batch: Callable[[int], None], what: str) -> int:
        """Calls `run_batch(n)` until `total` examples are done or the budget is spent (at least
        once); returns how many were done."""
        if self.seconds is None:
            batch = total
        started = time.monotonic()
        done = 0
        while done < total and (done == 0 or self.seconds is None or time.monotonic() - started < self.seconds):
            n = min(batch, total - done)
            run_batch(n)
            done += n
        budget = "" if self.seconds is None else f", budget {self.seconds:.0f} s (a shared machine: noisy)"
        self.tell(f"{what}: {done} of {total} in {time.monotonic() - started:.0f} s{budget}")
        return done
