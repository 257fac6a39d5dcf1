"""`chunkfs drain SERVER`: empty a chunkserver before taking it away. It gets no new chunks; the
metaserver's replicator copies each of its chunks to other servers and then drops it from the
chunk's record (its copy is deleted). `chunkfs status` shows how many chunks are still on it."""

from __future__ import annotations

import time
from pathlib import Path

import click
import msgspec

from chunkfs.cli.cluster_access import access_from, common_options, fail, run_with_meta
from chunkfs.cli.output import progress
from chunkfs.protocol import records as r

POLL_S = 1.0


def _remaining(access, server_id: str) -> r.ServerStatus:
    async def lookup(meta) -> r.ServerStatus:
        return next(s for s in (await meta.status()).servers if s.id == server_id)
    return run_with_meta(access, lookup)


@click.command()
@click.argument("server")
@click.option("--stop", is_flag=True, help="Stop draining SERVER: it takes new chunks again.")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=None,
              help="Wait up to this many seconds until no chunk is left on SERVER.")
@common_options
def drain(server: str, stop: bool, wait_s: float | None, data_dir: Path, metaserver: str | None,
          secret_file: Path | None, as_json: bool) -> None:
    """Move every chunk off SERVER (its HOST:PORT or id) so it can be taken away."""
    access = access_from(metaserver, secret_file, data_dir)
    state = run_with_meta(access, lambda meta: meta.drain(server, not stop))
    if wait_s is not None and not stop:
        deadline = time.monotonic() + wait_s
        with progress() as bar:
            task = bar.add_task(f"moving chunks off {state.address}", total=state.chunks)
            first = state.chunks
            while state.chunks and time.monotonic() < deadline:
                time.sleep(POLL_S)
                state = _remaining(access, state.id)
                bar.update(task, completed=max(0, first - state.chunks))
    if as_json:
        click.echo(msgspec.json.encode(state).decode())
    elif stop:
        click.echo(f"{state.address}: not draining; it takes new chunks again")
    else:
        click.echo(f"{state.address}: draining, {state.chunks} chunks still on it"
                   + ("" if state.alive else " (it is down: its chunks are copied from other replicas)"))
    if wait_s is not None and not stop and state.chunks:
        fail(f"{state.address} still holds {state.chunks} chunks after {wait_s:.0f} s", code=3)

