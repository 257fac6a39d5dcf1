"""Putting a finished file in place so that it survives a crash: shared by the chunkservers
(chunk versions) and the metaserver's backup and standby copies."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(tmp: Path, dest: Path) -> None:
    """Rename the already fsynced `tmp` over `dest`, then fsync the directory so the rename
    itself is on disk."""
    os.replace(tmp, dest)
    fsync_directory(dest.parent)


def fsync_directory(directory: Path) -> None:
    """Make the renames, creates and unlinks done in `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
