"""Starting and stopping chunkfs daemons as background processes, for `chunkfs up/down`,
`chunkfs mount` and the `mount.chunkfs` helper (systemd runs them its own way).

Every wait here is bounded in time; a daemon that exits while we wait for it is reported with
the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from chunkfs import mounts


class DaemonError(RuntimeError):
    pass


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spawn(command: list[str], log_path: Path, pid_path: Path | None = None) -> subprocess.Popen:
    """Start `command` in its own session, detached from the terminal, logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    if pid_path is not None:
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.write_text(f"{proc.pid}\n")
    return proc


def log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, proc: subprocess.Popen | None = None,
             log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise DaemonError(f"{what}: the process exited with code {proc.returncode}\n{tail}")
        time.sleep(0.1)
    raise DaemonError(f"{what}: not ready after {timeout_s:.0f} s" + (f"\n{log_tail(log_path)}" if log_path else ""))


def answers_health(url: str, timeout_s: float = 1.0, context: ssl.SSLContext | None = None) -> bool:
    """Whether `url` (a daemon's whole /health address, http[s]://HOST:PORT[/prefix]/health)
    answers 200: what `chunkfs up` and the tests wait for after starting a daemon. `context`:
    the TLS client context for an https URL (a cluster with `tls_dir`)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status == 200
    except OSError:
        return False


def read_pid(pid_path: Path) -> int | None:
    """The pid in `pid_path` if that process is alive and is a chunkfs daemon."""
    try:
        pid = int(pid_path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"chunkfs" not in cmdline:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else pid


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                _reap(pid)
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def unmount(mountpoint: Path, timeout_s: float = 10.0) -> None:
    """Unmount a chunkfs mount: cleanly if possible, lazily if busy, by aborting the FUSE
    connection if its daemon no longer answers."""
    mountpoint = Path(mountpoint)
    if not mounts.is_mounted(mountpoint):
        return
    for command in (["fusermount3", "-u", str(mountpoint)], ["fusermount3", "-uz", str(mountpoint)]):
        if subprocess.run(command, capture_output=True, timeout=timeout_s).returncode == 0:
            return
    abort_fuse_connection(mountpoint)
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=timeout_s)


def abort_fuse_connection(mountpoint: Path) -> None:
    """For a hung daemon: write to the connection's abort file (needs root and fusectl)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(Path(mountpoint).absolute()):
                _major, minor = fields[2].split(":")
                abort = Path(f"/sys/fs/fuse/connections/{minor}/abort")
                with contextlib.suppress(OSError):
                    abort.write_text("1")
                return
