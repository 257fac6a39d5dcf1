"""A metaserver restart while a mount copies small files: the pause the application sees.

    .venv/bin/python bench/restart_pause.py --dir DATA_DIR [--port P] [--before-s 5] [--after-s 10]

Brings up a local cluster on DATA_DIR with `chunkfs up` (one chunkserver, goal 1; DATA_DIR/meta
may already hold a large namespace, e.g. the one bench/scale.py built), starts a copier (a thread
copying a 4 KiB file into the mount again and again, each copy opened, written and closed, as
`cp` does) and, `--before-s` into it, restarts the metaserver as systemctl restart does: SIGTERM,
wait for the process to end, start the same command again. Reports the restart time (SIGTERM to
/health answering), the longest gap between two of the copier's successful copies, and every
error the copier got. Then `chunkfs down`. The issue's promise: the gap is at most the restart
time + 2 s, and no error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from chunkfs.daemons import module_command, read_pid, spawn

PAYLOAD_BYTES = 4096


class Copier(threading.Thread):
    """The application: copies one small file into `target` under a new name, over and over."""

    def __init__(self, source: Path, target: Path) -> None:
        super().__init__(name="copier", daemon=True)
        self.source, self.target = source, target
        self.done_at: list[float] = []  # time.monotonic() of each copy finished
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            try:
                shutil.copyfile(self.source, self.target / f"copy{i}")
                self.done_at.append(time.monotonic())
            except OSError as exc:
                self.errors.append(f"{time.monotonic():.3f}: {exc!r}")
            i += 1

    def longest_gap_s(self, since: float) -> float:
        """The longest time without a finished copy, from `since` to the last one."""
        times = [since, *(t for t in self.done_at if t >= since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _cli(*args: str) -> list[str]:
    return module_command("chunkfs.cli", *args)


def _healthy(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(what: str, ready, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout_s} s")
        time.sleep(0.02)


def measure(data_dir: Path, port: int, before_s: float = 5.0, after_s: float = 10.0) -> dict:
    """Up, copy, restart the metaserver, copy on, down; the figures (see the module's doc)."""
    mountpoint = data_dir / "mnt"
    up = _cli("up", "--dir", str(data_dir), "--mount", str(mountpoint), "--port", str(port),
              "--chunkservers", "1", "--goal", "1", "--heartbeat-timeout-s", "4")
    address = f"127.0.0.1:{port}"
    subprocess.run(up, check=True, stdout=subprocess.DEVNULL)
    try:
        target = mountpoint / f"copier-{os.getpid()}"
        target.mkdir(exist_ok=True)
        source = data_dir / "copier-source"
        source.write_bytes(os.urandom(PAYLOAD_BYTES))
        copier = Copier(source, target)
        copier.start()
        time.sleep(before_s)
        pid_file = data_dir / "run" / "metaserver.pid"
        pid = read_pid(pid_file)
        if pid is None:
            raise SystemExit("the metaserver is not running")
        command = [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        restart_began = time.monotonic()
        os.kill(pid, signal.SIGTERM)  # as systemctl restart does: the same command again once it is gone
        _wait("the metaserver's exit", lambda: not Path(f"/proc/{pid}").exists(), 60)
        stopped_s = time.monotonic() - restart_began
        spawn(command, data_dir / "logs" / "metaserver.log", pid_file)
        _wait("the metaserver's start", lambda: _healthy(address), 120)
        healthy_at = time.monotonic()
        restart_s = healthy_at - restart_began
        time.sleep(after_s)
        copier.stopping.set()
        copier.join(60)
        return {"restart_s": round(restart_s, 2), "stop_s": round(stopped_s, 2),
                "copier_longest_gap_s": round(copier.longest_gap_s(restart_began - before_s), 2),
                "first_copy_after_healthy_s": round(min((t for t in copier.done_at if t >= healthy_at),
                                                        default=float("nan")) - healthy_at, 2),
                "copier_files": len(copier.done_at), "copier_errors": len(copier.errors),
                "copier_error_samples": copier.errors[:5]}
    finally:
        subprocess.run(_cli("down", "--dir", str(data_dir)), check=False, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, help="the cluster's data directory")
    parser.add_argument("--port", type=int, default=random.randrange(20000, 29000))
    parser.add_argument("--before-s", type=float, default=5.0)
    parser.add_argument("--after-s", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.dir.absolute(), args.port, args.before_s, args.after_s)))


if __name__ == "__main__":
    main()
