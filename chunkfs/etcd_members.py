"""The etcd members a metaserver group with failover elects its primary through: how each is
started (`chunkfs up --ha`, the network-namespace test cluster; systemd/chunkfs-etcd.service
does the same with a config file), and the endpoint list the metaservers are given.

chunkfs runs Debian's `etcd-server` (3.4) as it is; nothing here is chunkfs's own consensus.
Three members keep answering with one down; with two down, no primary can renew its lease, so
changes stop (with an error after the clients' `retry_s`) until a majority is back.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

ETCD_BINARY = "etcd"
INSTALL_HINT = "etcd is not installed: apt-get install etcd-server etcd-client (Debian's, 3.4)"


@dataclass(frozen=True)
class EtcdMember:
    name: str  # also in its command line, so chunkfs.daemons.read_pid knows it for chunkfs's
    host: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


def etcd_binary() -> str:
    """The etcd program's path; RuntimeError with how to install it when it is missing."""
    found = shutil.which(ETCD_BINARY) or shutil.which(ETCD_BINARY, path="/usr/bin:/usr/sbin")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def member_command(member: EtcdMember, members: list[EtcdMember], data_dir: Path, token: str) -> list[str]:
    """The command line starting `member` of a new cluster of `members` (its data in `data_dir`;
    started again on the same directory, it rejoins with what it has)."""
    return [etcd_binary(), "--name", member.name, "--data-dir", str(data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in members),
            "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--logger", "zap", "--log-level", "warn"]


def endpoints(members: list[EtcdMember]) -> str:
    """What a metaserver's `etcd` option takes."""
    return ",".join(m.client_url for m in members)
