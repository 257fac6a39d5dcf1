"""A chunkfs cluster spread over network namespaces, one per host, for fault-injection tests.

Every daemon gets a namespace of its own (`<tag>-meta`, `<tag>-cs1`..., `<tag>-client1`...),
joined to the others by a veth pair into a bridge that lives in a namespace of its own
(`<tag>-br`); one more veth pair connects this (root) namespace to the bridge, so tests and
`chunkfs status --metaserver ...` reach every daemon. Addresses come from a /24 in 10.0.0.0/8
that no route here uses yet; the tag is random, so concurrent runs never share a name.

Faults a test can inject, and undo: SIGKILL/stop/start any daemon, cut a link (the bridge side of
its veth goes down), slow or drop packets on a link (netem when the kernel has it, else a tbf
rate limit plus an nftables random drop), give a chunkserver a small tmpfs as its disk, wipe a
chunkserver's disk. `cleanup()` unmounts, kills by pid and deletes every namespace, link and
tmpfs it made, whatever state the cluster is in; it is safe to call twice.

Daemons are started as `chunkfs up` starts them (`chunkfs.daemons.spawn`), through
`nsenter --net=...` (which execs, so the pid is the daemon's, and keeps the mount namespace,
so the clients' FUSE mounts are visible here), by a launcher process (see `Launcher` for why).

From a shell:  `python tests/netns_cluster.py up DIR [--tls]` / `python tests/netns_cluster.py down DIR`
(or bench/netns_cluster.sh).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import select
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from chunkfs import auth
from chunkfs.etcd_members import TLS_NAME as ETCD_TLS_NAME, EtcdMember, endpoints as etcd_endpoints, member_command
from chunkfs.daemons import abort_fuse_connection, log_tail, module_command, read_pid, stop_pid, unmount, wait_for
from chunkfs.mount.helper import FIELDS as MOUNT_FIELDS, launch
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient
from chunkfs.tls import TlsFiles

META_PORT = 9520
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_MEMBERS = 3
CHUNK_PORT = 9521
STATE_FILE = "netns-cluster.json"


class NetnsError(RuntimeError):
    pass


# The launcher's side: one JSON request a line on stdin, one JSON answer a line on stdout.
_LAUNCHER = """
import json, subprocess, sys
from pathlib import Path
from chunkfs.daemons import spawn
children = []  # kept so the daemons that end are reaped (poll)
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "run":
            done = subprocess.run(req["argv"], input=req.get("input"), capture_output=True, text=True,
                                  timeout=req["timeout_s"])
            answer = {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
        else:
            proc = spawn(req["argv"], Path(req["log"]), Path(req["pid_file"]))
            children.append(proc)
            answer = {"pid": proc.pid}
    except (OSError, subprocess.SubprocessError) as exc:
        answer = {"rc": 127, "out": "", "err": str(exc)}
    children = [proc for proc in children if proc.poll() is None]
    print(json.dumps(answer), flush=True)
"""


class Launcher:
    """Runs every command and daemon the test process needs from a helper process started
    before any file on the mounts was opened.

    Why: when a process holding chunkfs files open forks, the child's copies of those files are
    closed at exec, and each close is a FUSE flush that commits what the file has buffered, which
    waits for the metaserver and chunkservers: the very things a fault test has killed or cut
    off. Restarting the metaserver, or bringing a link back up, from such a process hangs until
    the mount gives up (`retry_s`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, close_fds=True)

    def _ask(self, request: dict, timeout_s: float) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s + 5)
        answer = self.proc.stdout.readline() if ready else ""
        if not answer:
            self.proc.kill()  # the next call starts a new one
            raise NetnsError(f"launcher: no answer to {request['argv'][:4]}")
        return json.loads(answer)

    def run(self, command: list[str], input: str | None = None, timeout_s: float = 30) -> tuple[int, str, str]:
        answer = self._ask({"op": "run", "argv": command, "input": input, "timeout_s": timeout_s}, timeout_s)
        return answer["rc"], answer["out"], answer["err"]

    def spawn(self, command: list[str], log_path: Path, pid_path: Path) -> int:
        answer = self._ask({"op": "spawn", "argv": command, "log": str(log_path), "pid_file": str(pid_path)}, 10)
        if "pid" not in answer:
            raise NetnsError(f"cannot start {command[-1]}: {answer['err']}")
        return answer["pid"]


_launcher: Launcher | None = None


def launcher() -> Launcher:
    """The process's launcher, started at the first call: make that call before opening files
    on a mount (NetnsCluster() does)."""
    global _launcher
    if _launcher is None or _launcher.proc.poll() is not None:
        _launcher = Launcher()
    return _launcher


def run(*command: str, check: bool = True, timeout_s: float = 30, input: str | None = None) -> tuple[int, str]:
    """(exit code, stdout) of `command`, run by the launcher; a failure raises unless `check` is off."""
    code, out, err = launcher().run(list(command), input, timeout_s)
    if check and code != 0:
        raise NetnsError(f"{' '.join(command)}: {err.strip() or code}")
    return code, out


def _free_subnet() -> str:
    """A 10.a.b.0/24 prefix ("10.a.b") that no address or route in this namespace overlaps."""
    routes = run("ip", "-4", "route", "show", "table", "all")[1] + run("ip", "-4", "addr")[1]
    for _ in range(100):
        prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        if f"{prefix}." not in routes and " 10.0.0.0/8" not in routes:
            return prefix
    raise NetnsError("no free 10.x.y.0/24 subnet")


@dataclass
class Node:
    name: str  # meta, cs1..csN, client1..clientN
    netns: str
    ip: str

    @property
    def enter(self) -> list[str]:
        """A command prefix running a program in this node's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]


class NetnsCluster:
    def __init__(self, root: Path, chunkservers: int = 5, clients: int = 2, goal: int = 3,
                 heartbeat_timeout_s: float = 3.0, scrub_mb_per_s: float = 0.0,
                 disk_mb: dict[str, int] | None = None, mount_options: dict[str, str] | None = None,
                 tag: str | None = None, subnet: str | None = None,
                 metaserver_options: dict[str, str] | None = None, ha: bool = False, tls: bool = False,
                 scrub_interval_s: float = 2.0) -> None:
        """`ha`: two metaservers electing their primary through three etcd members (each its
        own node), instead of one metaserver. `tls`: every daemon and mount given `tls_dir`
        (certificates for every node's address, made at `up`), as `chunkfs up --tls` runs."""
        launcher()  # now, before this process opens files on the mounts
        self.root = Path(root).absolute()
        self.tag = tag or f"cfs{os.urandom(3).hex()}"
        self.subnet = subnet or _free_subnet()
        self.goal = goal
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.scrub_mb_per_s = scrub_mb_per_s
        self.scrub_interval_s = scrub_interval_s  # short: a fault test waits for the next pass
        self.disk_mb = disk_mb or {}  # chunkserver -> size of the tmpfs it gets as its disk
        self.mount_options = {"retry_s": "30", **(mount_options or {})}
        self.metaserver_options = metaserver_options or {}  # more flags, e.g. {"client-timeout-s": "5"}
        self.bridge_ns = f"{self.tag}-br"
        self.host_link = f"{self.tag}h"  # the root namespace's end, at most 15 characters
        self.ha = ha
        metaservers = ["meta1", "meta2"] if ha else ["meta"]
        self.nodes: dict[str, Node] = {name: Node(name, f"{self.tag}-{name}", f"{self.subnet}.{i}")
                                       for i, name in enumerate(metaservers, 1)}
        for i in range(1, ETCD_MEMBERS + 1 if ha else 1):
            self.nodes[f"etcd{i}"] = Node(f"etcd{i}", f"{self.tag}-etcd{i}", f"{self.subnet}.{200 + i}")
        for i in range(1, chunkservers + 1):
            self.nodes[f"cs{i}"] = Node(f"cs{i}", f"{self.tag}-cs{i}", f"{self.subnet}.{10 + i}")
        for i in range(1, clients + 1):
            self.nodes[f"client{i}"] = Node(f"client{i}", f"{self.tag}-client{i}", f"{self.subnet}.{100 + i}")
        self.secret_file = self.root / "secret"
        self.tls_dir = self.root / "tls" if tls else None
        self.logs, self.run_dir = self.root / "logs", self.root / "run"
        self.impaired: set[str] = set()

    # ---- names ----------------------------------------------------------------------------------
    @property
    def chunkservers(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("cs")]

    @property
    def clients(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("client")]

    @property
    def metaservers(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("meta")]

    @property
    def etcd_members(self) -> list[EtcdMember]:
        return [EtcdMember(f"chunkfs-{n}", self.nodes[n].ip, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
                           tls=self.tls_dir is not None)
                for n in self.nodes if n.startswith("etcd")]

    @property
    def metaserver(self) -> str:
        """What clients are given: every metaserver's address."""
        return ",".join(self.meta_address(name) for name in self.metaservers)

    def meta_address(self, name: str) -> str:
        return f"{self.nodes[name].ip}:{META_PORT}"

    def role(self, name: str) -> str:
        """A metaserver's role from its /health (primary, standby, waiting; "down": no answer)."""
        try:
            context = self.tls_context()
            answer = httpx.get(f"{self.scheme}://{self.meta_address(name)}/health", timeout=2, verify=context or True)
            return str(answer.json().get("role", "?"))
        except (httpx.HTTPError, ValueError):
            return "down"

    def primary(self) -> str | None:
        """The metaserver serving as the primary now, if one is."""
        return next((name for name in self.metaservers if self.role(name) in ("primary", "metaserver")), None)

    def address(self, name: str) -> str:
        return f"{self.nodes[name].ip}:{CHUNK_PORT}"

    def data_dir(self, name: str) -> Path:
        return self.root / "chunkservers" / name

    def mnt(self, client: str = "client1") -> Path:
        return self.root / "mnt" / client

    def pid(self, name: str) -> int | None:
        return read_pid(self.run_dir / f"{name}.pid")

    # ---- bring up, take down ------------------------------------------------------------------
    def up(self) -> None:
        """Network, metaserver, chunkservers, mounts; on any failure everything is taken down."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._save_state()
            self._make_network()
            auth.create_secret(self.secret_file)
            if self.tls_dir is not None:
                self._make_certs()
            for name in self.nodes:
                if name.startswith("etcd"):
                    self.start(name)
            for name in self.metaservers:
                self.start(name)
            for name in self.chunkservers:
                self.start(name)
            self.wait_alive(len(self.chunkservers))
            for client in self.clients:
                self.mount(client)
        except BaseException:
            self.cleanup()
            raise

    def __enter__(self) -> NetnsCluster:
        self.up()  # which takes down what it started if it fails
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def _save_state(self) -> None:
        state = {"tag": self.tag, "subnet": self.subnet, "chunkservers": len(self.chunkservers),
                 "clients": len(self.clients), "goal": self.goal, "disk_mb": self.disk_mb,
                 "metaserver": self.metaserver, "secret_file": str(self.secret_file),
                 "heartbeat_timeout_s": self.heartbeat_timeout_s, "scrub_mb_per_s": self.scrub_mb_per_s,
                 "scrub_interval_s": self.scrub_interval_s,
                 "metaserver_options": self.metaserver_options, "ha": self.ha,
                 "tls": self.tls_dir is not None}
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, root: Path) -> NetnsCluster:
        s = json.loads((Path(root) / STATE_FILE).read_text())
        return cls(root, s["chunkservers"], s["clients"], s["goal"], s["heartbeat_timeout_s"],
                   s["scrub_mb_per_s"], s["disk_mb"], tag=s["tag"], subnet=s["subnet"],
                   metaserver_options=s.get("metaserver_options"), ha=s.get("ha", False), tls=s.get("tls", False),
                   scrub_interval_s=s.get("scrub_interval_s", 2.0))

    def _make_network(self) -> None:
        run("ip", "netns", "add", self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for node in self.nodes.values():
            run("ip", "netns", "add", node.netns)
            run("ip", "-n", node.netns, "link", "set", "lo", "up")
            self._attach(f"v-{node.name}", node.netns, "eth0", node.ip)
        self._attach("v-host", "1", self.host_link, f"{self.subnet}.254", peer_is_root=True)

    def _attach(self, bridge_end: str, netns: str, dev: str, ip: str, peer_is_root: bool = False) -> None:
        """A veth pair: `bridge_end` on the bridge, `dev` with address `ip` in `netns`."""
        run("ip", "-n", self.bridge_ns, "link", "add", bridge_end, "type", "veth", "peer", "name", dev,
            "netns", netns)
        run("ip", "-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0", "up")
        in_ns = [] if peer_is_root else ["-n", netns]
        run("ip", *in_ns, "addr", "add", f"{ip}/24", "dev", dev)
        run("ip", *in_ns, "link", "set", dev, "up")

    def cleanup(self) -> None:
        """Unmount the clients, kill every daemon, delete the namespaces, links and tmpfs disks;
        each step is tried even when one before it failed."""
        steps = [lambda client=client: self.unmount(client) for client in self.clients]
        steps += [lambda name=name: self.stop(name, timeout_s=3)
                  for name in [*self.metaservers, *self.chunkservers, *(n for n in self.nodes if n.startswith("etcd"))]]
        steps += [lambda ns=node.netns: run("ip", "netns", "del", ns, check=False) for node in self.nodes.values()]
        steps += [lambda: run("ip", "netns", "del", self.bridge_ns, check=False),  # with the host link's peer
                  lambda: run("ip", "link", "del", self.host_link, check=False)]
        steps += [lambda name=name: _is_mountpoint(self.data_dir(name))
                  and run("umount", "-l", str(self.data_dir(name)), check=False) for name in self.chunkservers]
        failures = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                failures.append(str(exc))
        if failures:
            raise NetnsError("cleanup: " + "; ".join(failures))

    # ---- daemons --------------------------------------------------------------------------------
    def start(self, name: str) -> None:
        """Start a daemon that is not running (the metaserver: and wait until it answers)."""
        if self.pid(name) is not None:
            return
        node = self.nodes[name]
        log, pid_file = self.logs / f"{name}.log", self.run_dir / f"{name}.pid"
        if name.startswith("etcd"):
            members = self.etcd_members
            member = next(m for m in members if m.name == f"chunkfs-{name}")
            files = TlsFiles(self.tls_dir, ETCD_TLS_NAME) if self.tls_dir is not None else None
            launcher().spawn(node.enter + member_command(member, members, self.root / name, self.tag, files),
                             log, pid_file)
            return
        if name.startswith("meta"):
            ha = ["--etcd", etcd_endpoints(self.etcd_members), "--etcd-prefix", f"/{self.tag}"] if self.ha else []
            pid = launcher().spawn(node.enter + module_command(
                "chunkfs.metaserver.main", "--listen", self.meta_address(name), "--data-dir", str(self.root / name),
                "--secret-file", str(self.secret_file), "--default-goal", str(self.goal),
                "--heartbeat-timeout-s", str(self.heartbeat_timeout_s), "--trash-time-s", "0", *ha, *self._tls_args(),
                *(arg for option, value in self.metaserver_options.items() for arg in (f"--{option}", value))),
                log, pid_file)
            if self.ha:
                wait_for(f"{name} answering", lambda: self.role(name) != "down", 30, log_path=log)
            wait_for("a primary metaserver", lambda: self._metaserver_answers(pid, log), 60, log_path=log)
            return
        data_dir = self.data_dir(name)
        data_dir.mkdir(parents=True, exist_ok=True)
        if name in self.disk_mb and not _is_mountpoint(data_dir):
            run("mount", "-t", "tmpfs", "-o", f"size={self.disk_mb[name]}m,mode=0700", f"chunkfs-{name}",
                str(data_dir))
        launcher().spawn(node.enter + module_command(
            "chunkfs.chunkserver.main", "--listen", self.address(name), "--data-dir", str(data_dir),
            "--metaserver", self.metaserver, "--secret-file", str(self.secret_file),
            "--heartbeat-interval-s", str(min(1.0, self.heartbeat_timeout_s / 4)),
            "--scrub-mb-per-s", str(self.scrub_mb_per_s), "--scrub-interval-s", str(self.scrub_interval_s),
            *self._tls_args()), log, pid_file)

    def _make_certs(self) -> None:
        """The cluster CA and every part's certificate, as an operator makes them (`chunkfs certs
        init`), valid for every node's address (and this host's loopback, which tests use)."""
        hosts = ["127.0.0.1", "localhost", f"{self.subnet}.254", *(node.ip for node in self.nodes.values())]
        run(*module_command("chunkfs.cli", "certs", "init", "--dir", str(self.tls_dir),
                            *(arg for host in hosts for arg in ("--host", host))), timeout_s=60)

    def _tls_args(self) -> list[str]:
        return [] if self.tls_dir is None else ["--tls-dir", str(self.tls_dir)]

    def tls_context(self) -> ssl.SSLContext | None:
        """What this process connects with (as an admin), with TLS."""
        return None if self.tls_dir is None else TlsFiles(self.tls_dir, "admin").client_context()

    @property
    def scheme(self) -> str:
        """What a URL to any of its daemons starts with."""
        return "http" if self.tls_dir is None else "https"

    @property
    def api_options(self) -> dict[str, str]:
        """What `chunkfs.client.connect` needs besides the address and secret to reach this cluster."""
        return {} if self.tls_dir is None else {"tls_dir": str(self.tls_dir)}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(name)
        if pid is None:
            raise NetnsError(f"{name} is not running")
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while self.pid(name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, name: str, timeout_s: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not ended within `timeout_s`."""
        pid = self.pid(name)
        if pid is not None:
            stop_pid(pid, timeout_s)

    def mount(self, client: str) -> None:
        mountpoint = self.mnt(client)
        mountpoint.mkdir(parents=True, exist_ok=True)
        options = {**self.mount_options, "secret_file": str(self.secret_file),
                   **({"tls_dir": str(self.tls_dir)} if self.tls_dir else {})}
        if "cache_dir" in MOUNT_FIELDS:  # the disk cache goes with the cluster's directory, and is small
            options.setdefault("cache_dir", str(self.root / "cache" / client))
            options.setdefault("cache_size_mb", "256")
        launch(self.metaserver, mountpoint, options, self.logs / f"{client}.log", self.run_dir / f"{client}.pid",
               command_prefix=self.nodes[client].enter)

    def unmount(self, client: str) -> None:
        mountpoint = self.mnt(client)
        try:
            unmount(mountpoint)
        except subprocess.TimeoutExpired:
            abort_fuse_connection(mountpoint)
        if _in_proc_mounts(mountpoint):
            abort_fuse_connection(mountpoint)
            run("umount", "-l", str(mountpoint), check=False)
        pid = self.pid(client)
        if pid is not None:
            stop_pid(pid, timeout_s=5)

    # ---- the network --------------------------------------------------------------------------
    def link_down(self, name: str) -> None:
        """Cut the node's cable: its packets go nowhere, its connections hang until they time out."""
        run("ip", "-n", self.bridge_ns, "link", "set", f"v-{name}", "down")

    def link_up(self, name: str) -> None:
        run("ip", "-n", self.bridge_ns, "link", "set", f"v-{name}", "up")

    def impair(self, name: str, delay_ms: int = 0, loss_pct: float = 0.0, rate_mbit: int = 0) -> str:
        """Slow the node's link and/or drop a share of its packets, both ways. Uses netem where the
        kernel has it; without netem, delay becomes a rate limit (`rate_mbit`, or 50 Mbit/s) and
        loss an nftables random drop. Returns what was applied."""
        node = self.nodes[name]
        self.impaired.add(name)
        ns = ["ip", "netns", "exec", node.netns]
        netem = [*(["delay", f"{delay_ms}ms"] if delay_ms else []), *(["loss", f"{loss_pct}%"] if loss_pct else []),
                 *(["rate", f"{rate_mbit}mbit"] if rate_mbit else [])]
        if run(*ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", *netem, check=False)[0] == 0:
            run("ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "add", "dev", f"v-{name}", "root",
                "netem", *netem)
            return "netem " + " ".join(netem)
        applied = []
        if delay_ms or rate_mbit:
            rate = rate_mbit or 50
            for where, dev in ((node.netns, "eth0"), (self.bridge_ns, f"v-{name}")):
                run("ip", "netns", "exec", where, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", f"{rate}mbit", "burst", "64kb", "latency", f"{max(delay_ms, 50)}ms")
            applied.append(f"tbf rate {rate}mbit")
        if loss_pct:
            per_mille = int(loss_pct * 10)
            rules = (f"table inet chunkfs_impair {{\n"
                     f" chain input {{ type filter hook input priority 0; policy accept; iifname \"lo\" accept;"
                     f" numgen random mod 1000 < {per_mille} drop; }}\n"
                     f" chain output {{ type filter hook output priority 0; policy accept; oifname \"lo\" accept;"
                     f" numgen random mod 1000 < {per_mille} drop; }}\n}}\n")
            run(*ns, "nft", "-f", "-", input=rules)
            applied.append(f"nft drop {loss_pct}%")
        return ", ".join(applied)

    def clear_impairment(self, name: str) -> None:
        node = self.nodes[name]
        run("ip", "netns", "exec", node.netns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        run("ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "del", "dev", f"v-{name}", "root", check=False)
        run("ip", "netns", "exec", node.netns, "nft", "delete", "table", "inet", "chunkfs_impair", check=False)
        self.impaired.discard(name)

    def cut_between(self, name: str, others: list[str]) -> None:
        """Drop every packet between `name` and `others`, both ways (an nftables table in
        `name`'s namespace): a partition that leaves its other links alone."""
        addresses = ", ".join(self.nodes[other].ip for other in others)
        rules = (f"table inet chunkfs_cut {{\n"
                 f" chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {addresses} }} drop; }}\n"
                 f" chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {addresses} }} drop; }}\n}}\n")
        run("ip", "netns", "exec", self.nodes[name].netns, "nft", "-f", "-", input=rules)

    def heal_cut(self, name: str) -> None:
        run("ip", "netns", "exec", self.nodes[name].netns, "nft", "delete", "table", "inet", "chunkfs_cut",
            check=False)

    # ---- disks ----------------------------------------------------------------------------------
    def chunk_files(self, name: str) -> list[Path]:
        return sorted((self.data_dir(name) / "chunks").glob("*/*.chunk"))

    def wipe_disk(self, name: str) -> None:
        """A stopped chunkserver's disk replaced by an empty one that keeps the server's identity
        (`server_id`, as a config-managed host would)."""
        if self.pid(name) is not None:
            raise NetnsError(f"{name} is running; stop it first")
        shutil.rmtree(self.data_dir(name) / "chunks", ignore_errors=True)

    def fill_disk(self, name: str, leave_bytes: int) -> None:
        """Fill the chunkserver's disk (a tmpfs of `disk_mb`) with a ballast file, up to
        `leave_bytes` free; the server learns of it only when its next write fails."""
        if name not in self.disk_mb:
            raise NetnsError(f"{name} has no disk of its own (give it one with disk_mb=)")
        fd = os.open(self.data_dir(name) / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(20):  # chunks written meanwhile take room too: try again with less
                free = shutil.disk_usage(self.data_dir(name)).free
                if free <= leave_bytes:
                    return
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, free - leave_bytes)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def unfill_disk(self, name: str) -> None:
        (self.data_dir(name) / "ballast").unlink(missing_ok=True)

    # ---- asking the metaserver ----------------------------------------------------------------
    def _metaserver_answers(self, pid: int, log: Path) -> bool:
        if _exited(pid):
            raise NetnsError(f"the metaserver exited:\n{log_tail(log)}")
        try:
            self.status(retry_s=0.5)
            return True
        except Exception:  # not up yet: refused, timed out, or answering 5xx
            return False

    def meta_call(self, fn, retry_s: float = 10.0):
        """`await fn(MetaClient)` against this cluster's metaserver, from this process."""
        secret = auth.load_secret(self.secret_file)

        async def call():
            http = SignedHttp(secret, retry_s=retry_s, connect_timeout_s=2, timeout_s=20, trio_native=True,
                              tls=self.tls_context())
            try:
                return await fn(MetaClient(http, self.metaserver))
            finally:
                await http.aclose()
        return trio.run(call)

    def status(self, retry_s: float = 10.0) -> r.ClusterStatus:
        return self.meta_call(lambda meta: meta.status(), retry_s)

    def layout(self, path: Path) -> r.FileLayout:
        ino = os.stat(path).st_ino
        return self.meta_call(lambda meta: meta.open_file(ino))

    def server_id(self, name: str) -> str:
        return (self.data_dir(name) / "server_id").read_text().strip()

    def wait_alive(self, count: int, timeout_s: float = 30) -> None:
        addresses = {self.address(n) for n in self.chunkservers}
        alive = lambda: sum(s.alive for s in self.status().servers if s.address in addresses)
        wait_for(f"{count} chunkservers alive", lambda: alive() == count, timeout_s)


def _exited(pid: int) -> bool:
    """Gone or a zombie (`read_pid` is no help here: before nsenter execs, it is not chunkfs yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _in_proc_mounts(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _is_mountpoint(path: Path) -> bool:
    return path.exists() and _in_proc_mounts(path.absolute())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netns_cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="start a cluster in network namespaces with its data in DIR")
    up_cmd.add_argument("dir", type=Path)
    up_cmd.add_argument("--chunkservers", type=int, default=5)
    up_cmd.add_argument("--clients", type=int, default=2)
    up_cmd.add_argument("--goal", type=int, default=3)
    up_cmd.add_argument("--heartbeat-timeout-s", type=float, default=3.0)
    up_cmd.add_argument("--tls", action="store_true", help="TLS with mutual authentication on every link")
    down_cmd = sub.add_parser("down", help="take the cluster in DIR down (its data stays)")
    down_cmd.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("netns_cluster: needs root (network namespaces, mounts)")
    if args.command == "down":
        if not (args.dir / STATE_FILE).exists():
            sys.exit(f"netns_cluster: no cluster in {args.dir}")
        NetnsCluster.from_state(args.dir).cleanup()
        (args.dir / STATE_FILE).unlink()
        print(f"down; data kept in {args.dir}")
        return
    if (args.dir / STATE_FILE).exists():
        sys.exit(f"netns_cluster: {args.dir} holds a cluster; take it down first")
    cluster = NetnsCluster(args.dir, args.chunkservers, args.clients, args.goal, args.heartbeat_timeout_s, tls=args.tls)
    try:
        cluster.up()
    except NetnsError as exc:
        sys.exit(f"netns_cluster: {exc}")
    print(f"metaserver   {cluster.metaserver}   (status page: {cluster.scheme}://{cluster.metaserver}/)")
    for name in cluster.chunkservers:
        print(f"{name:12} {cluster.address(name):20} netns {cluster.nodes[name].netns}  pid {cluster.pid(name)}")
    for client in cluster.clients:
        print(f"{client:12} {cluster.mnt(client)!s:20} netns {cluster.nodes[client].netns}")
    print(f"status:      chunkfs status --metaserver {cluster.metaserver} --secret-file {cluster.secret_file}")
    print(f"cut a link:  ip -n {cluster.bridge_ns} link set v-cs1 down")
    print(f"take down:   {sys.executable} {Path(__file__).absolute()} down {args.dir}")


if __name__ == "__main__":
    main()
