"""Where a live mount records which cluster it serves, so `chunkfs goal/info PATH` can find the
metaserver and secret for a path without being told.

Each mount writes `<runtime dir>/mounts/<sha1 of the mountpoint>.json` when it starts and removes
it when it stops; the runtime dir is `/run/chunkfs` for root, `$XDG_RUNTIME_DIR/chunkfs` or
`~/.cache/chunkfs` for others.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/chunkfs")
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "chunkfs" if base else Path.home() / ".cache" / "chunkfs"


def _record_path(mountpoint: Path) -> Path:
    """`mountpoint` must already be absolute and resolved: resolving a live mountpoint from
    inside its own daemon would wait on itself."""
    digest = hashlib.sha1(str(mountpoint).encode()).hexdigest()
    return runtime_dir() / "mounts" / f"{digest}.json"


def record(mountpoint: Path, metaserver: str, secret_file: Path, pid: int, root_ino: int = 1,
           tls_dir: str = "") -> None:
    """`root_ino` is the cluster's inode shown as the mount's root (a subdirectory mount);
    `tls_dir` its TLS directory (chunkfs.tls), for the commands that find the cluster by it."""
    path = _record_path(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mountpoint": str(mountpoint), "metaserver": metaserver,
                                "secret_file": str(Path(secret_file).resolve()), "pid": pid,
                                "root_ino": root_ino, "tls_dir": tls_dir}))


def forget(mountpoint: Path) -> None:
    _record_path(mountpoint).unlink(missing_ok=True)


def chunkfs_mountpoints() -> list[Path]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.chunkfs":
                out.append(Path(fields[1].encode().decode("unicode_escape")))
    return out


def is_mounted(mountpoint: Path) -> bool:
    """Without touching the mountpoint itself (its daemon may be hung)."""
    return Path(os.path.abspath(mountpoint)) in chunkfs_mountpoints()


def find(path: Path) -> dict | None:
    """The record of the chunkfs mount that holds `path`, if any."""
    path = Path(path).resolve()
    for mountpoint in sorted(chunkfs_mountpoints(), key=lambda p: len(str(p)), reverse=True):
        if path == mountpoint or mountpoint in path.parents:
            try:
                return json.loads(_record_path(mountpoint).read_text())
            except (OSError, ValueError):
                return None
    return None
