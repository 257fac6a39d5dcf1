"""The etcd members a metaserver group with failover elects its primary through: how each is
started (`chunkfs up --ha`, the network-namespace test cluster; systemd/chunkfs-etcd.service
does the same with a config file), and the endpoint list the metaservers are given.

chunkfs runs Debian's `etcd-server` (3.4) as it is; nothing here is chunkfs's own consensus.
Three members keep answering with one down; with two down, no primary can renew its lease, so
changes stop (with an error after the clients' `retry_s`) until a majority is back.

With TLS (a cluster run with `tls_dir`) the members serve their clients and each other HTTPS only,
with the cluster CA's `etcd` certificate (`chunkfs certs init` makes it), and ask every peer and
every client for a certificate of the cluster CA (`--client-cert-auth`, `--peer-client-cert-auth`):
the metaservers connect with theirs (`EtcdClient`'s `tls`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from chunkfs.tls import TlsFiles

ETCD_BINARY = "etcd"
TLS_NAME = "etcd"  # the certificate the members serve with, of those `chunkfs certs init` makes
INSTALL_HINT = "etcd is not installed: apt-get install etcd-server etcd-client (Debian's, 3.4)"


@dataclass(frozen=True)
class EtcdMember:
    name: str  # also in its command line, so chunkfs.daemons.read_pid knows it for chunkfs's
    host: str
    client_port: int
    peer_port: int
    tls: bool = False  # HTTPS to clients and peers (member_command's `tls` gives its files)

    @property
    def client_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.peer_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"


def etcd_binary() -> str:
    """The etcd program's path; RuntimeError with how to install it when it is missing."""
    found = shutil.which(ETCD_BINARY) or shutil.which(ETCD_BINARY, path="/usr/bin:/usr/sbin")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def member_command(member: EtcdMember, members: list[EtcdMember], data_dir: Path, token: str,
                   tls: TlsFiles | None = None) -> list[str]:
    """The command line starting `member` of a new cluster of `members` (its data in `data_dir`;
    started again on the same directory, it rejoins with what it has). `tls`: the files it serves
    and checks peers with (the members are made with `tls=True` then)."""
    if (tls is not None) != member.tls:
        raise ValueError("an etcd member with TLS needs its TLS files, one without none")
    secured = [] if tls is None else [
        "--cert-file", str(tls.cert), "--key-file", str(tls.key), "--trusted-ca-file", str(tls.ca),
        "--client-cert-auth",
        "--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key), "--peer-trusted-ca-file", str(tls.ca),
        "--peer-client-cert-auth"]
    return [etcd_binary(), *secured, "--name", member.name, "--data-dir", str(data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in members),
            "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--logger", "zap", "--log-level", "warn"]


def endpoints(members: list[EtcdMember]) -> str:
    """What a metaserver's `etcd` option takes."""
    return ",".join(m.client_url for m in members)
