"""`chunkfs up` and `chunkfs down`: a whole cluster (metaserver, chunkservers, one mount) on
this machine, its data kept under one directory so `down` then `up` finds every file again.

Layout of `--dir` (default `./.chunkfs`): `secret` (0600), `credentials/NAME` (with `--roles`: the
role credential of each part, 0600), `meta/` (LMDB), `chunkservers/csN/`,
`cache/` (the mount's disk chunk cache), `gateway/keys.json` (the gateway's access keys), `logs/*.log`, `run/*.pid` and `run/cluster.json` (what is running where).
"""

from __future__ import annotations

import functools
import json
import os
import ssl
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chunkfs import DEFAULT_METASERVER_PORT, auth, mounts
from chunkfs.cli.cluster_access import DEFAULT_DIR, ClusterAccess, fail, local_cluster_file, run_with_meta
from chunkfs.cli.gateway_cmd import local_keys_file
from chunkfs.gateway.main import REST_PORT_OFFSET, S3_PORT_OFFSET
from chunkfs.etcd_members import TLS_NAME as ETCD_TLS_NAME, EtcdMember, endpoints as etcd_endpoints, member_command
from chunkfs.daemons import DaemonError, answers_health, module_command, read_pid, spawn, stop_pid, unmount, wait_for
from chunkfs.mount.helper import OptionError, launch, parse_options
from chunkfs.protocol import records as r
from chunkfs.tls import TlsFiles, init_certs

console = Console()
HA_SECOND_OFFSET = 40  # `up --ha`: the second metaserver's port, from --port
HA_ETCD_OFFSET = 200  # `up --ha`: etcd members' client ports +201..+203, peer ports +211..+213


def _alive_servers(access: ClusterAccess) -> int:
    async def count(meta):
        return sum(1 for s in (await meta.status()).servers if s.alive)
    return run_with_meta(access, count)


def _credential(access: ClusterAccess, data_dir: Path, role: str, name: str) -> Path:
    """The file of the `role` credential named `name` (made through the metaserver the first time)."""
    path = data_dir / "credentials" / name
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)

        async def add(meta):
            return await meta.change_credentials("add", r.CredentialReq(role=role, name=name))

        text = run_with_meta(access, add)["credential"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    return path


def _start_gateway(gateway: dict[str, str], metaserver: str, secret_file: Path, logs: Path, run: Path,
                   tls_args: tuple[str, ...] = (), context: ssl.SSLContext | None = None) -> None:
    """`context`: with TLS (`tls_args`), the gateway serves HTTPS too; what checks its certificate."""
    proc = spawn(module_command("chunkfs.gateway.main", "--s3-listen", gateway["s3"], "--rest-listen", gateway["rest"],
                                "--metaserver", metaserver, "--secret-file", str(secret_file),
                                "--keys-file", gateway["keys_file"], *tls_args),
                 logs / "gateway.log", run / "gateway.pid")
    scheme = "https" if context else "http"
    wait_for("gateway", lambda: answers_health(f"{scheme}://{gateway['rest']}/api/v1/health", context=context), 30,
             proc, logs / "gateway.log")


def _start_etcd(port: int, data_dir: Path, logs: Path, run: Path, tls_dir: Path | None = None) -> str:
    """Three etcd members on this machine for `up --ha`; their endpoints, once they answer.
    `tls_dir`: they serve HTTPS only and ask for certificates of the cluster CA (`up --tls`)."""
    members = [EtcdMember(f"chunkfs-etcd{i}", "127.0.0.1", port + HA_ETCD_OFFSET + i, port + HA_ETCD_OFFSET + 10 + i,
                          tls=tls_dir is not None)
               for i in (1, 2, 3)]
    files = TlsFiles(tls_dir, ETCD_TLS_NAME) if tls_dir is not None else None
    try:
        for i, member in enumerate(members, 1):
            if read_pid(run / f"etcd{i}.pid") is None:
                spawn(member_command(member, members, data_dir / "etcd" / f"etcd{i}", "chunkfs-local", files),
                      logs / f"etcd{i}.log", run / f"etcd{i}.pid")
    except RuntimeError as exc:  # etcd is not installed
        fail(str(exc))
    context = TlsFiles(tls_dir, "admin").client_context() if tls_dir is not None else None
    for i, member in enumerate(members, 1):
        wait_for(f"etcd{i}", functools.partial(answers_health, f"{member.client_url}/health", context=context), 30,
                 log_path=logs / f"etcd{i}.log")
    return etcd_endpoints(members)


@click.command()
@click.option("--dir", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="Where the cluster keeps its data, logs and pid files.")
@click.option("--mount", "mountpoint", type=click.Path(path_type=Path), default=Path("mnt"), show_default=True,
              help="Where to mount the filesystem.")
@click.option("--chunkservers", type=click.IntRange(1, 32), default=3, show_default=True)
@click.option("--goal", type=click.IntRange(1, 16), default=None,
              help="Default replicas per chunk [default: 3, or what the cluster was made with].")
@click.option("--port", type=click.IntRange(1, 65000), default=DEFAULT_METASERVER_PORT, show_default=True,
              help="Metaserver port; chunkservers take the ports after it.")
@click.option("--heartbeat-timeout-s", type=click.FloatRange(0.5), default=None,
              help="A chunkserver silent this long is down and its chunks are copied elsewhere "
                   "[default: 10, or what the cluster was started with].")
@click.option("--scrub-mb-per-s", type=click.FloatRange(0), default=None,
              help="How fast each chunkserver re-verifies its chunks, 0 for never "
                   "[default: 50, or what the cluster was started with].")
@click.option("--scrub-interval-s", type=click.FloatRange(1), default=None,
              help="Seconds at least between the starts of two scrub passes [default: a day, or what the cluster "
                   "was started with].")
@click.option("--client-timeout-s", type=click.FloatRange(0.5), default=None,
              help="A mount silent this long is gone: files it had open after unlinking them are freed "
                   "[default: the metaserver's, 90].")
@click.option("--body-timeout-s", type=click.FloatRange(0.1), default=None,
              help="Seconds a request body may take to reach a server [default: the daemons', 30].")
@click.option("--orphan-grace-s", type=click.FloatRange(0), default=None,
              help="An upload no commit names is garbage (for `chunkfs gc`) this long after its reservation "
                   "[default: the metaserver's, 3600].")
@click.option("--lock-grace-s", type=click.FloatRange(0), default=None,
              help="After a metaserver start, new file locks wait up to this long for the clients that held "
                   "locks to reclaim them [default: the metaserver's, 15].")
@click.option("--trash-time-s", type=click.FloatRange(0), default=None,
              help="Removed files stay in the trash this long unless a directory says otherwise "
                   "[default: the metaserver's, 86400; 0: not kept].")
@click.option("--ha", is_flag=True, help="Failover: three etcd members (ports +201..+203) and two metaservers "
              "(--port and +40) electing their primary; kill -9 the primary and the other takes over "
              "(needs etcd: apt-get install etcd-server). Remembered for the next `up`.")
@click.option("-o", "options", default="", help="Mount options, as for mount -o (see chunkfs-mount --help).")
@click.option("--no-gateway", is_flag=True, help="Do not start the S3/REST gateway "
              f"(S3 on port +{S3_PORT_OFFSET}, REST on +{REST_PORT_OFFSET} from --port: 9580 and 9581 by default).")
@click.option("--tls", "use_tls", is_flag=True, default=None,
              help="TLS with mutual authentication on every link of the cluster (certificates made in DIR/tls "
                   "by chunkfs certs init) [default: as the cluster was started].")
@click.option("--roles", is_flag=True, default=None,
              help="Give every chunkserver, the mount and the gateway a role credential of its own "
                   "(in DIR/credentials/) instead of the cluster secret [default: as the cluster was started].")
def up(data_dir: Path, mountpoint: Path, chunkservers: int, goal: int | None, port: int,
       heartbeat_timeout_s: float | None, scrub_mb_per_s: float | None, scrub_interval_s: float | None,
       client_timeout_s: float | None,
       body_timeout_s: float | None, orphan_grace_s: float | None, lock_grace_s: float | None,
       trash_time_s: float | None, ha: bool,
       options: str, no_gateway: bool, use_tls: bool | None, roles: bool | None) -> None:
    """Start a local cluster and mount it (keeps existing data)."""
    data_dir = data_dir.absolute()
    mountpoint = mountpoint.absolute()
    info_path = local_cluster_file(data_dir)
    previous = json.loads(info_path.read_text()) if info_path.exists() else {}
    goal = goal or previous.get("goal", 3)
    heartbeat_timeout_s = heartbeat_timeout_s or previous.get("heartbeat_timeout_s", 10.0)
    scrub_mb_per_s = previous.get("scrub_mb_per_s", 50.0) if scrub_mb_per_s is None else scrub_mb_per_s
    scrub_interval_s = previous.get("scrub_interval_s", 86400.0) if scrub_interval_s is None else scrub_interval_s
    roles = previous.get("roles", False) if roles is None else roles
    tls_dir = (data_dir / "tls") if (previous.get("tls_dir") if use_tls is None else use_tls) else None
    if tls_dir is not None:
        init_certs(tls_dir)  # those missing
    tls_args = ("--tls-dir", str(tls_dir)) if tls_dir else ()
    admin_tls = TlsFiles(tls_dir, "admin").client_context() if tls_dir else None
    secret_file = data_dir / "secret"
    auth.create_secret(secret_file)
    logs, run = data_dir / "logs", data_dir / "run"
    ha = ha or previous.get("ha", False)
    metaservers = {"metaserver": f"127.0.0.1:{port}", **({"metaserver2": f"127.0.0.1:{port + HA_SECOND_OFFSET}"}
                                                          if ha else {})}
    metaserver = ",".join(metaservers.values())
    access = ClusterAccess(metaserver, secret_file, str(tls_dir or ""))
    body_timeout = ("--body-timeout-s", str(body_timeout_s)) if body_timeout_s else ()
    gateway = None if no_gateway else {"s3": f"127.0.0.1:{port + S3_PORT_OFFSET}",
                                       "rest": f"127.0.0.1:{port + REST_PORT_OFFSET}",
                                       "keys_file": str(local_keys_file(data_dir))}
    info = {"metaserver": metaserver, "secret_file": str(secret_file), "mountpoint": str(mountpoint),
            "chunkservers": chunkservers, "goal": goal, "heartbeat_timeout_s": heartbeat_timeout_s,
            "scrub_mb_per_s": scrub_mb_per_s, "scrub_interval_s": scrub_interval_s, "gateway": gateway, "roles": roles, "tls_dir": str(tls_dir or ""),
            "ha": ha}
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    try:
        etcd = _start_etcd(port, data_dir, logs, run, tls_dir) if ha else ""
        scheme = "https" if admin_tls else "http"
        for name, address in metaservers.items():
            if read_pid(run / f"{name}.pid") is None:
                proc = spawn(module_command("chunkfs.metaserver.main", "--listen", address,
                                            "--data-dir", str(data_dir / name.replace("metaserver", "meta")),
                                            "--secret-file", str(secret_file),
                                            "--default-goal", str(goal),
                                            "--heartbeat-timeout-s", str(heartbeat_timeout_s),
                                            *(("--etcd", etcd) if etcd else ()),
                                            *(("--client-timeout-s", str(client_timeout_s)) if client_timeout_s else ()),
                                            *body_timeout,
                                            *(("--orphan-grace-s", str(orphan_grace_s)) if orphan_grace_s is not None else ()),
                                            *(("--lock-grace-s", str(lock_grace_s)) if lock_grace_s is not None else ()),
                                            *(("--trash-time-s", str(trash_time_s)) if trash_time_s is not None else ()),
                                            *tls_args),
                             logs / f"{name}.log", run / f"{name}.pid")
                wait_for(name, functools.partial(answers_health, f"{scheme}://{address}/health", context=admin_tls),
                         30, proc, logs / f"{name}.log")

        def key_of(role: str, name: str) -> Path:
            return _credential(access, data_dir, role, name) if roles else secret_file

        for i in range(1, chunkservers + 1):
            name = f"cs{i}"
            if read_pid(run / f"{name}.pid") is None:
                spawn(module_command("chunkfs.chunkserver.main", "--listen", f"127.0.0.1:{port + i}",
                                     "--data-dir", str(data_dir / "chunkservers" / name),
                                     "--metaserver", metaserver, "--secret-file", str(key_of("chunkserver", name)),
                                     "--heartbeat-interval-s", str(min(2.0, heartbeat_timeout_s / 4)),
                                     "--scrub-mb-per-s", str(scrub_mb_per_s), "--scrub-interval-s", str(scrub_interval_s),
                                     *body_timeout, *tls_args),
                      logs / f"{name}.log", run / f"{name}.pid")
        wait_for(f"{chunkservers} chunkservers", lambda: _alive_servers(access) >= chunkservers, 30,
                 log_path=logs / "cs1.log")
        mountpoint.mkdir(parents=True, exist_ok=True)
        if not mounts.is_mounted(mountpoint):
            launch(metaserver, mountpoint, {"metrics_listen": f"127.0.0.1:{port + 100}",
                                            "cache_dir": str(data_dir / "cache"), **parse_options(options),
                                            "secret_file": str(key_of("client", "mount")),
                                            **({"tls_dir": str(tls_dir)} if tls_dir else {})},
                   logs / "mount.log", run / "mount.pid")
        if gateway is not None:
            gateway["secret_file"] = str(key_of("gateway", "gateway"))
            info_path.write_text(json.dumps(info, indent=2))  # for `chunkfs gateway key` (see gateway_cmd)
            if read_pid(run / "gateway.pid") is None:
                _start_gateway(gateway, metaserver, Path(gateway["secret_file"]), logs, run, tls_args, admin_tls)
    except (DaemonError, OptionError) as exc:
        fail(str(exc))
    table = Table(title="chunkfs is up", show_header=False)
    table.add_row("mounted at", str(mountpoint))
    table.add_row("metaserver", f"{metaserver}  (status page and API)" + ("; the primary is elected through etcd "
                                                                          "(chunkfs status shows which)" if ha else ""))
    table.add_row("chunkservers", ", ".join(f"127.0.0.1:{port + i}" for i in range(1, chunkservers + 1)))
    if gateway is not None:
        web = "https" if tls_dir else "http"  # with --tls, a certificate of the cluster CA (DIR/tls/ca.pem)
        table.add_row("gateway", f"S3 {web}://{gateway['s3']}  REST {web}://{gateway['rest']}/api/v1/  "
                                 "(keys: chunkfs gateway key add NAME)")
        table.add_row("web", f"{web}://{gateway['rest']}/  (users: chunkfs user add NAME)")
    table.add_row("goal", str(goal))
    table.add_row("data", str(data_dir))
    table.add_row("logs", str(logs))
    table.add_row("stop with", f"chunkfs down --dir {data_dir}")
    console.print(table)


@click.command()
@click.option("--dir", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True)
def down(data_dir: Path) -> None:
    """Unmount and stop the local cluster; its data stays for the next `up`."""
    data_dir = data_dir.absolute()
    info_path = local_cluster_file(data_dir)
    if not info_path.exists():
        fail(f"no local cluster in {data_dir}")
    info = json.loads(info_path.read_text())
    run = data_dir / "run"
    unmount(Path(info["mountpoint"]))
    names = ["gateway", "mount", *sorted(p.stem for p in run.glob("cs*.pid")), "metaserver", "metaserver2",
             *sorted(p.stem for p in run.glob("etcd*.pid"))]
    for name in names:
        pid = read_pid(run / f"{name}.pid")
        if pid is not None:
            stop_pid(pid)
        (run / f"{name}.pid").unlink(missing_ok=True)
    console.print(f"chunkfs is down; data kept in {data_dir}")
