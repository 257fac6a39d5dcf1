"""Commands that ask a running cluster: `status`, `servers`, `goal`, `info`, `locks` (`fsck` and
`gc` have modules of their own)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import msgspec
from rich.table import Column, Table

from chunkfs import CHUNK_SIZE
from chunkfs.cli.cluster_access import access_from, common_options, inode_of, run_with_meta
from chunkfs.cli.output import console, echo_json, human_bytes as _bytes
from chunkfs.protocol import records as r


@click.command()
@common_options
def status(data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Servers, capacity, files, chunks and chunks under goal."""
    access = access_from(metaserver, secret_file, data_dir)
    s = run_with_meta(access, lambda meta: meta.status())
    if as_json:
        click.echo(msgspec.json.encode(s).decode())
        return
    alive = sum(1 for srv in s.servers if srv.alive)
    summary = Table(title=f"chunkfs at {access.metaserver}", show_header=False)
    summary.add_row("servers", f"{alive} up, {len(s.servers) - alive} down")
    summary.add_row("capacity", f"{_bytes(s.total_bytes)} total, {_bytes(s.free_bytes)} free")
    summary.add_row("files", f"{s.files} files, {s.directories} directories, {_bytes(s.file_bytes)}")
    summary.add_row("chunks", f"{s.chunks} ({s.chunks_under_goal} under goal)")
    summary.add_row("chunk data", f"{_bytes(s.chunk_bytes)} logical, {_bytes(s.stored_bytes)} physical (one replica "
                                  f"each): dedup ratio {s.sharing_ratio:.2f} (shared by dedup and snapshots)")
    summary.add_row("pending deletions", str(s.pending_deletions))
    summary.add_row("trash", f"{s.trash_files} removed files kept (`chunkfs trash list`)")
    summary.add_row("repairs", f"{s.repairs_running} running, {s.chunks_replicated} chunks re-replicated, "
                               f"{s.corrupt_found} corrupt found (since the metaserver started)")
    summary.add_row("default goal", str(s.default_goal))
    summary.add_row("file locks", f"{s.locks_held} held, {s.lock_waits} waiting (`chunkfs locks` lists them)")
    if (mem := s.memory) is not None:
        summary.add_row("metaserver memory", f"{_bytes(mem.rss_anon_bytes)} own, {_bytes(mem.rss_file_bytes)} mapped; "
                                             f"database {_bytes(mem.lmdb_used_bytes)} of {_bytes(mem.lmdb_map_bytes)}")
    if (ha := s.failover) is not None:
        summary.add_row("primary", f"{ha.primary} (epoch {ha.epoch}, lease {ha.lease_left_s:.1f} s left)")
        healthy = sum(1 for m in ha.etcd if m.healthy)
        summary.add_row("etcd", f"{healthy} of {len(ha.etcd)} members healthy: " + ", ".join(
            f"{m.endpoint} " + (f"[green]up[/] {m.version}" + (" leader" if m.leader else "") if m.healthy
                                 else f"[red]down[/] ({m.error[:60]})") for m in ha.etcd))
    for sb in s.standbys:
        state = ("[green]in sync[/]" if sb.in_sync else "[red]out of sync[/]") if sb.synchronous else "asynchronous"
        may_take_over = ha is not None and sb.name in ha.in_sync
        summary.add_row(f"standby {sb.name}", f"{state}, {sb.behind_batches} batches behind, last poll "
                                              f"{sb.last_poll_s:.1f} s ago" + (", may take over" if may_take_over else ""))
    for q in s.quotas_over_soft:
        summary.add_row(f"quota {q.path.decode(errors='replace')}",
                        f"[yellow]over its soft limit on {' and '.join(q.over_soft)}[/] (`chunkfs quota list`)")
    if s.quarantined_versions:
        summary.add_row("quarantine", f"{s.quarantined_versions} unknown chunk versions kept after a restore")
    for c in s.clients:  # each mount's chunk cache, as of its last change-feed poll
        summary.add_row(f"client {c.host}:{c.mountpoint}",
                        f"cache hits {c.cache.memory_hits} memory, {c.cache.disk_hits} disk; {c.cache.misses} misses; "
                        f"disk {_bytes(c.cache.disk_bytes)} of {_bytes(c.cache.disk_capacity_bytes)}")
    console.print(summary)
    servers = Table("address", "id", "state", "chunks", "used", "capacity", "last heartbeat")
    for srv in s.servers:
        state = "[green]up[/]" if srv.alive else "[red]down[/]"
        servers.add_row(srv.address, srv.id[:12], state + (", [yellow]draining[/]" if srv.draining else ""),
                        str(srv.chunks), _bytes(srv.used_bytes), _bytes(srv.capacity_bytes),
                        f"{srv.last_seen_s:.1f} s ago" if srv.last_seen_s >= 0 else "never")
    console.print(servers)


def server_state(srv: r.ServerStatus) -> str:
    return ("up" if srv.alive else "down") + (", draining" if srv.draining else "")


@click.command()
@common_options
def servers(data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """The chunkservers: state, chunks, space, last heartbeat and data directories."""
    access = access_from(metaserver, secret_file, data_dir)
    s = run_with_meta(access, lambda meta: meta.status())
    if as_json:
        echo_json([{**msgspec.to_builtins(srv), "state": server_state(srv),
                    "free_bytes": max(0, srv.capacity_bytes - srv.used_bytes)} for srv in s.servers])
        return
    colours = {"up": "green", "down": "red"}
    table = Table(Column("address", no_wrap=True), Column("id", no_wrap=True), Column("state", no_wrap=True),
                  "chunks", "used", "free", "capacity", "heartbeat", Column("data dirs", overflow="fold"),
                  title=f"{len(s.servers)} chunkservers of {access.metaserver}")
    for srv in s.servers:
        state = server_state(srv)
        table.add_row(srv.address, srv.id[:8], f"[{colours.get(state.split(',')[0], 'yellow')}]{state}[/]",
                      str(srv.chunks), _bytes(srv.used_bytes), _bytes(max(0, srv.capacity_bytes - srv.used_bytes)),
                      _bytes(srv.capacity_bytes),
                      f"{srv.last_seen_s:.1f} s ago" if srv.last_seen_s >= 0 else "never",
                      "\n".join(srv.data_dirs) or "?")
    console.print(table)


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.argument("goal", type=click.IntRange(1, 16), required=False)
@click.option("-r", "--recursive", is_flag=True, help="Set the goal of everything below PATH too.")
@common_options
def goal(path: Path, goal: int | None, recursive: bool, data_dir: Path, metaserver: str | None,
         secret_file: Path | None, as_json: bool) -> None:
    """Show or set how many replicas PATH's chunks keep (new files inherit a directory's goal)."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = inode_of(path)
    if goal is None:
        attr = run_with_meta(access, lambda meta: meta.getattr(ino))
    else:
        attr = run_with_meta(access, lambda meta: meta.set_goal(ino, goal, recursive))
    if as_json:
        click.echo(json.dumps({"path": str(path), "goal": attr.goal}))
    else:
        click.echo(f"{path}: goal {attr.goal}")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.argument("setting", type=click.Choice(["on", "off"]), required=False)
@click.option("-r", "--recursive", is_flag=True, help="Set it for everything below PATH too.")
@common_options
def dedup(path: Path, setting: str | None, recursive: bool, data_dir: Path, metaserver: str | None,
          secret_file: Path | None, as_json: bool) -> None:
    """Show or set whether writers of PATH look for content the cluster already holds before
    they upload a chunk (new files inherit a directory's setting; on by default). Off where
    data is seldom duplicated: no content hash, no call per chunk."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = inode_of(path)
    if setting is None:
        attr = run_with_meta(access, lambda meta: meta.getattr(ino))
    else:
        attr = run_with_meta(access, lambda meta: meta.set_dedup(ino, setting == "on", recursive))
    if as_json:
        click.echo(json.dumps({"path": str(path), "dedup": not attr.no_dedup}))
    else:
        click.echo(f"{path}: dedup {'off' if attr.no_dedup else 'on'}")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@common_options
def info(path: Path, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """The chunks of a file, where their replicas are, and which are shared with other files
    (dedup, snapshots)."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = inode_of(path)

    async def layout_and_status(meta):
        return await meta.open_file(ino), await meta.status(), dict(await meta.chunk_sharing(ino))

    layout, s, holders = run_with_meta(access, layout_and_status)
    addresses = {srv.id: srv.address for srv in s.servers}
    if as_json:  # the layout, and for each chunk its replicas' addresses and whether they are up
        data = msgspec.to_builtins(layout)
        data["path"] = str(path)
        data["inline"] = None if layout.inline is None else len(layout.inline)  # bytes kept inline, not the bytes
        for chunk, ref in zip(data["chunks"], layout.chunks, strict=True):
            chunk["replica_servers"] = [{"id": sid, "address": addresses.get(sid, ""), "up": sid in layout.servers}
                                        for sid in ref.replicas]
            chunk["holders"] = holders.get(ref.index, 1)  # chunk records holding its version (above 1: shared)
        echo_json(data)
        return
    console.print(f"{path}: inode {ino}, {layout.attr.size} bytes, goal {layout.attr.goal}, "
                  f"{len(layout.chunks)} chunks of {CHUNK_SIZE // 2**20} MiB"
                  + (" (read-only snapshot)" if layout.attr.read_only else ""))
    if layout.inline is not None:
        console.print(f"its first {len(layout.inline)} bytes are kept inline by the metaserver")
    shared = sum(1 for c in layout.chunks if holders.get(c.index, 1) > 1)
    if shared:
        console.print(f"{shared} of its chunks are shared (dedup or snapshots): stored once for every file holding them")
    table = Table("index", "chunk", "version", "length", "replicas", "shared")
    for c in layout.chunks:
        replicas = [(addresses.get(sid, sid[:12]), sid in layout.servers) for sid in c.replicas]
        held = holders.get(c.index, 1)
        table.add_row(str(c.index), str(c.chunk_id), str(c.version), str(c.length),
                      ", ".join(f"{a}" if up else f"[red]{a} (down)[/]" for a, up in replicas),
                      f"by {held} chunks" if held > 1 else "no")
    console.print(table)


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path), required=False)
@common_options
def locks(path: Path | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
          as_json: bool) -> None:
    """The flock and fcntl locks held (and waited for) on PATH, or on every file: which client,
    which process of it, which bytes."""
    access = access_from(metaserver, secret_file, data_dir, path)
    ino = inode_of(path) if path is not None else 0

    async def locks_and_clients(meta):
        return await meta.locks(ino), await meta.status()

    held, s = run_with_meta(access, locks_and_clients)
    if as_json:
        echo_json(held)
        return
    hosts = {c.id: f"{c.host}:{c.mountpoint}" for c in s.clients}
    table = Table("inode", "kind", "type", "bytes", "client", "pid", "state",
                  title=f"{len(held)} locks" + (f" on {path}" if path is not None else f" in {access.metaserver}"))
    for lock in held:
        end = "EOF" if lock.end == r.OFFSET_MAX else str(lock.end)
        table.add_row(str(lock.ino), "flock" if lock.flock else "fcntl", "exclusive" if lock.type == r.F_WRLCK else "shared",
                      "all" if lock.flock else f"{lock.start}-{end}", hosts.get(lock.client, lock.client[:12]),
                      str(lock.pid), "waiting" if lock.waiting else "held")
    console.print(table)
