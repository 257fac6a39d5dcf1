"""A history of metadata operations (mkdir, rename, rmdir, listdir) one client makes through the
Python API while faults happen, each with its invoke and complete time and outcome, checked
against a sequential model of the directory.

The client runs the operations one at a time, so the history is linearizable exactly when every
outcome is the model's after the operations before it: a lost acknowledgement shows as a listing
or a later operation missing a name (ENOENT), an operation done twice (a retry run again instead
of answered from the reply log) as EEXIST or ENOENT, a reordering as a listing that differs.
`final_violations` checks the end state as another client sees it. Directory leases are off,
so every operation is a call to the metaserver, not answered from the client's cache.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from chunkfs.client import Filesystem


@dataclass
class Operation:
    kind: str
    args: tuple[str, ...]
    invoked: float
    completed: float = 0.0
    outcome: str = ""  # "ok", an exception, or the listing


@dataclass
class MetadataHistory:
    fs: Filesystem
    root: str
    history: list[Operation] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # the model: what the directory holds
    _stop: threading.Event = field(default_factory=threading.Event)
    _next: int = 0

    def start(self) -> MetadataHistory:
        self.fs.makedirs(self.root, exist_ok=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 120) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.violations.append(f"the history's client still stuck after {timeout_s} s")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()

    def _new_name(self) -> str:
        self._next += 1
        return f"d{self._next:05d}"

    def _one(self) -> None:
        choice = random.random()
        if choice < 0.4 or len(self.names) < 3:
            name = self._new_name()
            self._do("mkdir", (name,), lambda: self.fs.mkdir(f"{self.root}/{name}"), lambda: self.names.add(name))
        elif choice < 0.6:
            old, new = random.choice(sorted(self.names)), self._new_name()
            self._do("rename", (old, new), lambda: self.fs.rename(f"{self.root}/{old}", f"{self.root}/{new}"),
                     lambda: (self.names.discard(old), self.names.add(new)))
        elif choice < 0.8:
            name = random.choice(sorted(self.names))
            self._do("rmdir", (name,), lambda: self.fs.rmdir(f"{self.root}/{name}"), lambda: self.names.discard(name))
        else:
            op = Operation("listdir", (), time.monotonic())
            try:
                listing = sorted(self.fs.listdir(self.root))
            except OSError as exc:
                self._record(op, repr(exc))
                return
            self._record(op, ",".join(listing))
            if listing != sorted(self.names):
                self.violations.append(f"listdir at {op.invoked:.2f}: missing {sorted(self.names - set(listing))}, "
                                       f"extra {sorted(set(listing) - self.names)}")

    def _do(self, kind: str, args: tuple[str, ...], call, apply) -> None:
        op = Operation(kind, args, time.monotonic())
        try:
            call()
        except OSError as exc:
            self._record(op, repr(exc))
            self.violations.append(f"{kind}{args} invoked at {op.invoked:.2f}: {exc!r}")
            apply()  # whatever happened, the model goes on as if it was done; a later listing tells
            return
        self._record(op, "ok")
        apply()

    def _record(self, op: Operation, outcome: str) -> None:
        op.completed, op.outcome = time.monotonic(), outcome
        self.history.append(op)

    def final_violations(self, listing: list[str]) -> list[str]:
        """The history's violations and whether `listing` (another client's) is the model's."""
        out = list(self.violations)
        if sorted(listing) != sorted(self.names):
            out.append(f"final listing: missing {sorted(self.names - set(listing))}, "
                       f"extra {sorted(set(listing) - self.names)}")
        return out
