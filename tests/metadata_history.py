"""A history of metadata operations (mkdir, rename, rmdir, listdir) that several clients make
concurrently through the Python API while faults happen, each with its invoke and complete time
and outcome, and a checker of it (linearizability, per name).

Each client works on names of its own (`c<client>-d<n>`, never used twice) in one shared
directory, one operation at a time, and lists the whole directory now and then, so every client
sees the others' changes (few enough names that a listing is one readdir call: one snapshot). Because a name is created once (mkdir, or as a rename's target) and
removed at most once (rmdir, or as a rename's source), and only by its owner, each name is a
register that goes absent -> present -> absent, and linearizability can be checked name by name
(it is a local property) without searching over orders:

- a listing shows a name that no operation invoked before the listing completed could have made,
  or one whose removal had completed before the listing was invoked: a write visible that was
  neither acknowledged nor in flight, or a lost removal;
- a listing misses a name whose creation had completed before it was invoked and whose removal
  was not invoked before it completed: a lost acknowledgement;
- a listing shows both names of one rename (never true at any instant), or neither while the
  rename's source had been made and its target not removed (the rename is not atomic);
- an operation fails (an application saw an error, not a pause: also how a mutation done twice,
  a retry run again instead of answered from the reply log, shows: EEXIST or ENOENT);
- the final listing, from another client once every operation completed, differs from what the
  completed operations leave.

A failed operation may have taken effect or not: its completion counts as never (its outcome is
open from its invocation on). Directory leases are off, so every operation is a call to the
metaserver, not answered from a client's cache.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial

from chunkfs.client import Filesystem

NAMES_PER_CLIENT = 30  # at most, so a listing of every client's names is one readdir page: one snapshot


@dataclass
class Operation:
    client: int
    kind: str  # mkdir, rename, rmdir, listdir
    args: tuple[str, ...]
    invoked: float
    completed: float = math.inf  # time.monotonic(); inf while under way, or when it failed
    error: str = ""
    listing: frozenset[str] = frozenset()


@dataclass
class _Register:
    """One name's life: the operation that made it and the one that removed it (if any)."""

    made: Operation | None = None
    removed: Operation | None = None

    def surely_present(self, start: float, end: float) -> bool:
        """Present throughout [start, end] in every order the history allows."""
        return (self.made is not None and self.made.completed <= start
                and (self.removed is None or self.removed.invoked >= end))

    def maybe_present(self, start: float, end: float) -> bool:
        """Present at some instant of [start, end] in some order the history allows."""
        return (self.made is not None and self.made.invoked <= end
                and (self.removed is None or self.removed.completed > start))


def check(history: list[Operation], final_listing: list[str] | None = None) -> list[str]:
    """The violations of `history` (see the module's doc); `final_listing`: the directory as
    another client lists it once every operation has completed."""
    registers: dict[str, _Register] = {}
    renames: list[Operation] = []
    violations: list[str] = []
    for op in history:
        if op.error:
            violations.append(f"client {op.client} {op.kind}{op.args} invoked at {op.invoked:.2f}: {op.error}")
        if op.kind in ("mkdir", "rename"):
            registers.setdefault(op.args[-1], _Register()).made = op
        if op.kind in ("rmdir", "rename"):
            registers.setdefault(op.args[0], _Register()).removed = op
        if op.kind == "rename":
            renames.append(op)
    for op in history:
        if op.kind != "listdir" or op.error:
            continue
        start, end = op.invoked, op.completed
        at = f"client {op.client} listing at {start:.2f}-{end:.2f}"
        for name in sorted(op.listing):
            register = registers.get(name)
            if register is None or not register.maybe_present(start, end):
                violations.append(f"{at}: shows {name}, which no acknowledged or pending operation made")
        for name, register in sorted(registers.items()):
            if name not in op.listing and register.surely_present(start, end):
                violations.append(f"{at}: misses {name}, made by an acknowledged operation and not removed")
        for rename in renames:
            old, new = rename.args
            source_made, target_removed = registers[old].made, registers[new].removed
            if old in op.listing and new in op.listing:
                violations.append(f"{at}: shows both {old} and {new}: the rename was not atomic")
            elif (old not in op.listing and new not in op.listing
                  and source_made is not None and source_made.completed <= start
                  and (target_removed is None or target_removed.invoked >= end)):
                violations.append(f"{at}: shows neither {old} nor {new}: the rename was not atomic")
    if final_listing is not None:
        ends = max((op.completed for op in history if op.completed < math.inf), default=0.0)
        final = set(final_listing)
        for name in sorted(final | registers.keys()):
            register = registers.get(name, _Register())
            if name in final and not register.maybe_present(ends, math.inf):
                violations.append(f"final listing: shows {name}, which should not be there")
            elif name not in final and register.surely_present(ends, math.inf):
                violations.append(f"final listing: misses {name}, made by an acknowledged operation")
    return violations


@dataclass
class MetadataHistory:
    """`clients` (one Filesystem each, each in a thread of its own) running random operations
    under `root` until `stop()`; `check` then gives the violations."""

    clients: list[Filesystem]
    root: str
    history: list[Operation] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    def start(self) -> MetadataHistory:
        self.clients[0].makedirs(self.root, exist_ok=True)
        self._threads = [threading.Thread(target=self._run, args=(i, fs), daemon=True)
                         for i, fs in enumerate(self.clients, 1)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 120) -> None:
        self._stop.set()
        for i, thread in enumerate(self._threads, 1):
            thread.join(timeout_s)
            if thread.is_alive():
                self.stuck.append(f"client {i} still stuck after {timeout_s} s")

    def check(self, final_listing: list[str]) -> list[str]:
        with self._lock:
            history = list(self.history)
        return self.stuck + check(history, final_listing)

    def _run(self, client: int, fs: Filesystem) -> None:
        mine: set[str] = set()  # the names this client made and did not remove (as far as it knows)
        made = 0
        while not self._stop.is_set():
            choice = random.random()
            if len(mine) < 3 or (choice < 0.4 and len(mine) < NAMES_PER_CLIENT):
                made += 1
                name = f"c{client}-d{made:05d}"
                self._do(client, "mkdir", (name,), partial(fs.mkdir, f"{self.root}/{name}"))
                mine.add(name)
            elif choice < 0.6:
                made += 1
                old, new = random.choice(sorted(mine)), f"c{client}-d{made:05d}"
                self._do(client, "rename", (old, new), partial(fs.rename, f"{self.root}/{old}", f"{self.root}/{new}"))
                mine.discard(old)
                mine.add(new)
            elif choice < 0.8 or len(mine) >= NAMES_PER_CLIENT:
                name = random.choice(sorted(mine))
                self._do(client, "rmdir", (name,), partial(fs.rmdir, f"{self.root}/{name}"))
                mine.discard(name)
            else:
                self._do(client, "listdir", (), partial(fs.listdir, self.root))

    def _do(self, client: int, kind: str, args: tuple[str, ...], call) -> Operation:
        """Run `call`, recording it; whatever its outcome, the client goes on as if it took effect."""
        op = Operation(client, kind, args, time.monotonic())
        with self._lock:
            self.history.append(op)
        try:
            result = call()
        except OSError as exc:
            op.error = repr(exc)
            return op
        if kind == "listdir":
            op.listing = frozenset(result)
        op.completed = time.monotonic()
        return op
