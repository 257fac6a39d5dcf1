"""Metaserver failover figures on a local `chunkfs up --ha` cluster (three etcd members, two
metaservers, one chunkserver, goal 1, a mount).

    .venv/bin/python bench/failover.py --dir DATA_DIR [--port P] [--window-s 15] [--after-s 10]

1. The cost of synchronous replication on small-file creates, in one run: a copier (bench/
   restart_pause.py's: a 4 KiB file copied into the mount again and again, as `cp` does) for
   `--window-s` with the standby in sync, then as long with the standby's metaserver killed (once
   the primary has moved on without it), then again with it back in sync. Creates/s of each.
2. Failover: the copier going, SIGKILL of the primary. Seconds from the kill to the other
   metaserver answering as the primary (its /health), to the first copy finished after the kill
   (the first acknowledged write on the new primary), the longest gap between two finished
   copies (the pause the application saw), and every error the copier got.
Then `chunkfs down`. Needs etcd (apt-get install etcd-server).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx

from chunkfs.daemons import read_pid
from restart_pause import PAYLOAD_BYTES, Copier, _cli, _wait

HA_SECOND_OFFSET = 40  # chunkfs.cli.local_cluster's


def role(address: str) -> str:
    try:
        return str(httpx.get(f"http://{address}/health", timeout=1).json().get("role", "?"))
    except (httpx.HTTPError, ValueError):
        return "down"


def primary(addresses: dict[str, str]) -> str | None:
    return next((name for name, address in addresses.items() if role(address) == "primary"), None)


def standby_in_sync(data_dir: Path) -> bool:
    done = subprocess.run(_cli("status", "--dir", str(data_dir), "--json"), capture_output=True, text=True)
    if done.returncode != 0:
        return False
    status = json.loads(done.stdout)
    return any(sb["in_sync"] for sb in status.get("standbys", [])) and bool((status.get("failover") or {}).get("in_sync"))


def creates_per_s(copier: Copier, window_s: float) -> float:
    before, started = len(copier.done_at), time.monotonic()
    time.sleep(window_s)  # a measuring window
    return round((len(copier.done_at) - before) / (time.monotonic() - started), 1)


def measure(data_dir: Path, port: int, window_s: float, after_s: float) -> dict:
    mountpoint = data_dir / "mnt"
    run = data_dir / "run"
    addresses = {"metaserver": f"127.0.0.1:{port}", "metaserver2": f"127.0.0.1:{port + HA_SECOND_OFFSET}"}
    up = _cli("up", "--ha", "--dir", str(data_dir), "--mount", str(mountpoint), "--port", str(port),
              "--chunkservers", "1", "--goal", "1", "--heartbeat-timeout-s", "4", "--no-gateway")
    subprocess.run(up, check=True, stdout=subprocess.DEVNULL)
    figures: dict = {}
    try:
        _wait("a standby in sync", lambda: standby_in_sync(data_dir), 120)
        target = mountpoint / f"copier-{os.getpid()}"
        target.mkdir(exist_ok=True)
        source = data_dir / "copier-source"
        source.write_bytes(os.urandom(PAYLOAD_BYTES))
        copier = Copier(source, target)
        copier.start()
        figures["creates_per_s_with_standby"] = creates_per_s(copier, window_s)
        old = primary(addresses)
        if old is None:
            raise SystemExit("no primary")
        standby = next(name for name in addresses if name != old)
        standby_pid = read_pid(run / f"{standby}.pid")
        if standby_pid is None:
            raise SystemExit("the standby is not running")
        os.kill(standby_pid, signal.SIGKILL)
        _wait("the primary going on without the standby", lambda: not standby_in_sync(data_dir) and
              len(copier.done_at) > 0 and time.monotonic() - copier.done_at[-1] < 1, 60)
        figures["creates_per_s_without_standby"] = creates_per_s(copier, window_s)
        subprocess.run(up, check=True, stdout=subprocess.DEVNULL)  # starts what is not running: the standby
        _wait("the standby back in sync", lambda: standby_in_sync(data_dir), 120)
        figures["creates_per_s_with_standby_again"] = creates_per_s(copier, window_s)
        pid = read_pid(run / f"{old}.pid")
        if pid is None:
            raise SystemExit("the primary is not running")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait("a new primary", lambda: primary(addresses) == standby, 120)
        figures["new_primary_after_s"] = round(time.monotonic() - killed_at, 2)
        time.sleep(after_s)  # the copier goes on this long on the new primary
        copier.stopping.set()
        copier.join(60)
        first = next((t for t in copier.done_at if t > killed_at), None)
        figures.update({
            "first_write_after_kill_s": round(first - killed_at, 2) if first else None,
            "copier_longest_gap_s": round(copier.longest_gap_s(killed_at - 1), 2),
            "copier_files": len(copier.done_at), "copier_errors": len(copier.errors),
            "copier_error_samples": copier.errors[:5]})
        return figures
    finally:
        subprocess.run(_cli("down", "--dir", str(data_dir)), check=False, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, help="the cluster's data directory")
    parser.add_argument("--port", type=int, default=random.randrange(20000, 29000))
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--after-s", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.dir.absolute(), args.port, args.window_s, args.after_s)))


if __name__ == "__main__":
    main()
