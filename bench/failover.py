"""Metaserver failover figures on a local `chunkfs up --ha` cluster (three etcd members, two
metaservers, one chunkserver, goal 1, a mount), with default settings.

    .venv/bin/python bench/failover.py --dir DATA_DIR [--port P] [--window-s 15]
        [--fault kill|stop] [--runs 1] [--stopped-s 30] [--after-s 5] [--file-bytes 4096]

1. The cost of synchronous replication on small-file creates, in one run: a copier (bench/
   restart_pause.py's: a file copied into the mount again and again, as `cp` does) for
   `--window-s` with the standby in sync, then as long with the standby's metaserver killed (once
   the primary has moved on without it), then again with it back in sync. Creates/s of each.
   `--window-s 0` leaves this part out.
2. Failover, `--runs` times: the copier going, the primary SIGKILLed (`--fault kill`; then started
   again) or SIGSTOPped for `--stopped-s` (`--fault stop`; then SIGCONTed). Seconds from the fault
   to the other metaserver answering as the primary (its /health), to the first copy finished
   after the fault (the first acknowledged write on the new primary), the longest gap between two
   finished copies (the pause the application saw), and the errors the copier got. Each run
   waits for the old primary to be a standby in sync again, so the next run fails the other way.
`--file-bytes` above 64 KiB makes every copy a chunk on the chunkserver (not inline), so the
first write also waits for the chunkserver to report to the new primary. Then `chunkfs down`.
Needs etcd (apt-get install etcd-server).
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


def metaservers(data_dir: Path, addresses: dict[str, str], pid_of: str) -> tuple[str, str, int]:
    """(the primary, the standby, the pid of the one `pid_of` names: "primary" or "standby")."""
    old = primary(addresses)
    if old is None:
        raise SystemExit("no primary")
    standby = next(name for name in addresses if name != old)
    pid = read_pid(data_dir / "run" / f"{old if pid_of == 'primary' else standby}.pid")
    if pid is None:
        raise SystemExit(f"the {pid_of} is not running")
    return old, standby, pid


def replication_cost(data_dir: Path, up: list[str], addresses: dict[str, str], copier: Copier,
                     window_s: float) -> dict:
    """Part 1 of the module's doc."""
    figures = {"creates_per_s_with_standby": creates_per_s(copier, window_s)}
    *_, standby_pid = metaservers(data_dir, addresses, "standby")
    os.kill(standby_pid, signal.SIGKILL)
    _wait("the primary going on without the standby", lambda: not standby_in_sync(data_dir) and
          len(copier.done_at) > 0 and time.monotonic() - copier.done_at[-1] < 1, 60)
    figures["creates_per_s_without_standby"] = creates_per_s(copier, window_s)
    subprocess.run(up, check=True, stdout=subprocess.DEVNULL)  # starts what is not running: the standby
    _wait("the standby back in sync", lambda: standby_in_sync(data_dir), 120)
    figures["creates_per_s_with_standby_again"] = creates_per_s(copier, window_s)
    return figures


def failover(data_dir: Path, up: list[str], addresses: dict[str, str], copier: Copier, fault: str,
             stopped_s: float, after_s: float) -> dict:
    """Part 2 of the module's doc, once."""
    old, new, pid = metaservers(data_dir, addresses, "primary")
    errors_before = len(copier.errors)
    fault_at = time.monotonic()
    os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    try:
        # only the new one is asked: a stopped one answers nothing (each ask would wait its time-out)
        _wait("a new primary", lambda: role(addresses[new]) == "primary", 120)
        new_primary_s = time.monotonic() - fault_at
        _wait("a copy finished on the new primary", lambda: copier.done_at[-1] > fault_at, 120)
        time.sleep(after_s)  # the copier goes on this long on the new primary
    finally:
        if fault == "stop":
            time.sleep(max(0.0, stopped_s - (time.monotonic() - fault_at)))  # the hang's duration
            os.kill(pid, signal.SIGCONT)
    first = next(t for t in copier.done_at if t > fault_at)
    figures = {"fault": fault, "new_primary_after_s": round(new_primary_s, 2),
               "first_write_after_s": round(first - fault_at, 2),
               "copier_longest_gap_s": round(copier.longest_gap_s(fault_at - 1), 2),
               "copier_errors": len(copier.errors) - errors_before,
               "copier_error_samples": copier.errors[errors_before:errors_before + 3]}
    if fault == "kill":
        subprocess.run(up, check=True, stdout=subprocess.DEVNULL)  # the old one, back as a standby
    _wait("the old primary a standby in sync", lambda: role(addresses[old]) == "standby" and standby_in_sync(data_dir),
          180)
    return figures


def measure(data_dir: Path, port: int, window_s: float, fault: str, runs: int, stopped_s: float, after_s: float,
            file_bytes: int) -> dict:
    mountpoint = data_dir / "mnt"
    addresses = {"metaserver": f"127.0.0.1:{port}", "metaserver2": f"127.0.0.1:{port + HA_SECOND_OFFSET}"}
    up = _cli("up", "--ha", "--dir", str(data_dir), "--mount", str(mountpoint), "--port", str(port),
              "--chunkservers", "1", "--goal", "1", "--no-gateway")
    subprocess.run(up, check=True, stdout=subprocess.DEVNULL)
    figures: dict = {"file_bytes": file_bytes}
    copier = None
    try:
        _wait("a standby in sync", lambda: standby_in_sync(data_dir), 120)
        target = mountpoint / f"copier-{os.getpid()}"
        target.mkdir(exist_ok=True)
        source = data_dir / "copier-source"
        source.write_bytes(os.urandom(file_bytes))
        copier = Copier(source, target)
        copier.start()
        if window_s > 0:
            figures.update(replication_cost(data_dir, up, addresses, copier, window_s))
        else:
            _wait("a first copy", lambda: bool(copier.done_at), 60)
        figures["failovers"] = [failover(data_dir, up, addresses, copier, fault, stopped_s, after_s)
                                for _ in range(runs)]
        figures["copier_files"] = len(copier.done_at)
        return figures
    finally:
        if copier is not None:
            copier.stopping.set()
            copier.join(60)
        subprocess.run(_cli("down", "--dir", str(data_dir)), check=False, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, help="the cluster's data directory")
    parser.add_argument("--port", type=int, default=random.randrange(20000, 29000))
    parser.add_argument("--window-s", type=float, default=15.0, help="each creates/s window (0: part 1 left out)")
    parser.add_argument("--fault", choices=("kill", "stop"), default="kill")
    parser.add_argument("--runs", type=int, default=1, help="failovers, one after the other")
    parser.add_argument("--stopped-s", type=float, default=30.0, help="--fault stop: how long the primary hangs")
    parser.add_argument("--after-s", type=float, default=5.0)
    parser.add_argument("--file-bytes", type=int, default=PAYLOAD_BYTES)
    args = parser.parse_args()
    print(json.dumps(measure(args.dir.absolute(), args.port, args.window_s, args.fault, args.runs, args.stopped_s,
                             args.after_s, args.file_bytes)))


if __name__ == "__main__":
    main()
