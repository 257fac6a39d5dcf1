"""`chunkfs up --ha` as a new user tries it, here with TLS on every link (`--tls`): copy files in,
kill -9 the primary metaserver, keep copying; the copy pauses and goes on, `chunkfs status`
shows the new primary, every file reads back identical, and `chunkfs backup` copies the new
primary's database over TLS. The faults one by one, in network namespaces:
tests/test_netns_failover.py."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from chunkfs import CHUNK_SIZE
from conftest import Cluster, chunkfs, wait_until

pytestmark = [
    pytest.mark.long,  # three etcd members, two metaservers and a failover: about a minute here
    pytest.mark.skipif(shutil.which("etcd", path=f"{os.environ.get('PATH', '')}:/usr/bin") is None,
                       reason="failover needs etcd (apt-get install etcd-server)"),
]


def primary_of(cluster: Cluster) -> str:
    """The primary `chunkfs status` names; "" while none answers as one (in a failover the
    standby answers 503 until it has taken over, and `chunkfs status` fails then)."""
    try:
        status = cluster.status()
    except AssertionError:
        return ""
    failover = status.get("failover") or {}
    return str(failover.get("primary", ""))


def test_up_ha_with_tls_fails_over_under_a_copy(tmp_path):
    cluster = Cluster(tmp_path, chunkservers=2, goal=2, mount_options="retry_s=30", up_options=("--ha", "--tls"))
    try:
        cluster.up()
        written: dict[str, bytes] = {}
        errors: list[BaseException] = []
        stop = threading.Event()

        def copy() -> None:
            try:
                while not stop.is_set():
                    name = f"f{len(written):04d}"
                    data = os.urandom(CHUNK_SIZE // 2 + len(written))
                    (cluster.mnt / name).write_bytes(data)
                    written[name] = data
            except OSError as exc:
                errors.append(exc)

        copier = threading.Thread(target=copy)
        copier.start()
        try:
            wait_until(lambda: len(written) >= 3, 60, "the copy under way")
            old = primary_of(cluster)
            names = {f"127.0.0.1:{cluster.port}": "metaserver"}
            cluster.kill(names.get(old, "metaserver2"))
            wait_until(lambda: primary_of(cluster) not in ("", old), 60, "a new primary in chunkfs status")
            before = len(written)
            wait_until(lambda: len(written) > before + 3 or errors, 60, "the copy going on")
        finally:
            stop.set()
            copier.join(120)
        assert not errors, errors
        for name, data in written.items():
            assert (cluster.mnt / name).read_bytes() == data, name
        chunkfs("backup", tmp_path / "meta.mdb.zst", "--dir", cluster.dir)
        assert (tmp_path / "meta.mdb.zst").stat().st_size > 0
    finally:
        cluster.cleanup()
