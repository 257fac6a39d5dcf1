"""The bound on what a mount holds of writes not yet stored on chunkservers.

Promises:
- `dirty_bytes` counts every byte buffered in open files' chunks plus every chunk being
  uploaded; a write that finds it at or over `max_bytes` waits (back-pressure on the writing
  program) until uploads have freed room. The overshoot is at most what the writers already
  admitted add (one FUSE write, at most 1 MiB, or one chunk's merge with its old content, each),
  so memory stays bounded however many files are written and however they are written.
- Waiting always ends: a writer that waits wakes the write-back task, which makes the files
  holding buffered chunks upload them, least recently written first, and then the holders
  those uploads made (the dedup lookups they gathered, `content_finder`) send theirs; uploads
  end (stored or failed) and release their bytes.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

log = logging.getLogger(__name__)


class BufferingFile(Protocol):
    async def write_back(self) -> None:
        """Start uploading every buffered chunk."""


class WriteBack:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.dirty_bytes = 0
        self.waits = 0  # writes that had to wait for room
        self._room = trio.Event()
        self._room.set()
        self._wanted = trio.Event()
        self._buffering: dict[BufferingFile, None] = {}  # least recently written first

    def add(self, n: int) -> None:
        """`n` more bytes held (negative: fewer)."""
        self.dirty_bytes += n
        if self.dirty_bytes < self.max_bytes:
            self._room.set()

    def buffering(self, file: BufferingFile, has_buffered_chunks: bool) -> None:
        """Where `file` stands: written to just now (True), or nothing buffered any more."""
        self._buffering.pop(file, None)
        if has_buffered_chunks:
            self._buffering[file] = None

    async def wait_for_room(self) -> None:
        """Return once the mount is under its bound (at once if it is)."""
        if self.dirty_bytes < self.max_bytes:
            return
        self.waits += 1
        while self.dirty_bytes >= self.max_bytes:
            if self._room.is_set():
                self._room = trio.Event()
            self._wanted.set()
            await self._room.wait()

    async def run(self) -> None:
        """Make files upload what they buffer while writers wait for room."""
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            told: set[BufferingFile] = set()
            while self.dirty_bytes >= self.max_bytes:
                # each holder once; and those a write-back made buffering (a file's chunks gathered for a dedup lookup)
                holders = [h for h in self._buffering if h not in told]
                if not holders:
                    break
                for holder in holders:
                    if self.dirty_bytes < self.max_bytes:
                        break
                    told.add(holder)
                    try:
                        await holder.write_back()
                    except Exception as exc:  # the file's own flush reports upload errors
                        log.warning("write-back of a file failed: %s", exc)
