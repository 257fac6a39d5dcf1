"""Placement rules of the metaserver's registry, without daemons: a full server gets no new
chunks, and right after a restart no chunk is placed until the known servers had time to report."""

from __future__ import annotations

import time
from types import SimpleNamespace

from chunkfs import CHUNK_SIZE
from chunkfs.metaserver import registry
from chunkfs.metaserver.db import MetaDB
from chunkfs.metaserver.registry import WRITABLE_MIN_FREE_BYTES, Registry
from chunkfs.protocol import records as r

GiB = 1 << 30


def hello(server_id: str, free_bytes: int) -> r.ServerHello:
    return r.ServerHello(id=server_id, address=f"10.0.0.{len(server_id)}:9521", capacity_bytes=GiB + free_bytes,
                         used_bytes=GiB)


def test_a_full_server_is_not_writable_and_never_placed(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    registry = Registry(db, heartbeat_timeout_s=5)
    registry.heartbeat(hello("roomy", 10 * GiB))
    registry.heartbeat(hello("full", CHUNK_SIZE))  # less than two chunks' room
    registry.heartbeat(hello("edge", WRITABLE_MIN_FREE_BYTES))
    assert {s.id for s in registry.writable()} == {"roomy", "edge"}
    for _ in range(50):
        assert "full" not in {s.id for s in registry.place(3)}
    db.close()


def test_placement_waits_after_a_restart_until_known_servers_report(tmp_path, monkeypatch):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    with db.env.begin(write=True) as txn:
        first = Registry(db, heartbeat_timeout_s=0.5)
        for sid in ("a", "b"):
            first.save(txn, hello(sid, GiB))
    restarted = Registry(db, heartbeat_timeout_s=0.5)  # knows a and b from LMDB, heard from neither
    assert restarted.settling()
    restarted.heartbeat(hello("a", GiB))
    assert restarted.settling()  # b may be alive too: placing now would put everything on a
    restarted.heartbeat(hello("b", GiB))
    assert not restarted.settling()
    silent = Registry(db, heartbeat_timeout_s=0.5)
    silent.heartbeat(hello("a", GiB))
    assert silent.settling()
    later = time.monotonic() + 0.6  # b never reports: after heartbeat_timeout_s it is down, placement goes on
    monkeypatch.setattr(registry, "time", SimpleNamespace(monotonic=lambda: later))  # its clock only
    assert not silent.settling()
    db.close()
