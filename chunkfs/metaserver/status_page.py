"""The read-only status page served at `/` (what MooseFS's CGI monitor shows): servers,
capacity, health, chunks under goal, repairs and the clients following the change feed.
Rendered on the server from the same `ClusterStatus` that `chunkfs status` prints; it needs no
secret, like /metrics, and changes nothing."""

from __future__ import annotations

from html import escape

from chunkfs.protocol import records as r

REFRESH_S = 5


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(status: r.ClusterStatus, address: str, clients: int) -> str:
    up = sum(s.alive for s in status.servers)
    down = len(status.servers) - up
    healthy = down == 0 and status.chunks_under_goal == 0
    used = status.total_bytes - status.free_bytes
    rows = "".join(
        f"<tr class={'up' if s.alive else 'down'}><td>{escape(s.address)}</td><td><code>{escape(s.id[:12])}</code></td>"
        f"<td>{'up' if s.alive else 'DOWN'}{' (draining)' if s.draining else ''}</td><td>{s.chunks}</td>"
        f"<td>{_size(s.used_bytes)}</td><td>{_size(s.capacity_bytes)}</td>"
        f"<td>{f'{s.last_seen_s:.1f} s ago' if s.last_seen_s >= 0 else 'never'}</td></tr>"
        for s in status.servers
    )
    facts = [
        ("health", "healthy" if healthy else f"{down} server(s) down, {status.chunks_under_goal} chunk(s) under goal"),
        ("chunkservers", f"{up} up, {down} down"),
        ("capacity", f"{_size(used)} used of {_size(status.total_bytes)} ({_size(status.free_bytes)} free)"),
        ("files", f"{status.files} files, {status.directories} directories"),
        ("chunks", f"{status.chunks} ({status.chunks_under_goal} under goal, default goal {status.default_goal})"),
        ("repairs", f"{status.repairs_running} running, {status.chunks_replicated} copies made, "
                    f"{status.corrupt_found} corrupt replicas found"),
        ("pending deletions", str(status.pending_deletions)),
        ("clients mounted", str(clients)),
    ]
    summary = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>chunkfs at {escape(address)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; }} .state {{ padding: .2em .6em; border-radius: .3em; color: white;
  background: {'#2a7' if healthy else '#c33'}; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ padding: .3em .8em; text-align: left;
  border-bottom: 1px solid #ddd; }} tr.down td {{ color: #c33; font-weight: bold; }}
</style></head><body>
<h1>chunkfs at {escape(address)} <span class="state" id="health">{'healthy' if healthy else 'degraded'}</span></h1>
<table id="summary">{summary}</table>
<h2>Chunkservers</h2>
<table id="servers"><tr><th>address</th><th>id</th><th>state</th><th>chunks</th><th>used</th><th>capacity</th>
<th>last heartbeat</th></tr>{rows}</table>
<p>Refreshes every {REFRESH_S} s. The same figures: <code>chunkfs status</code>, <a href="/metrics">/metrics</a>.</p>
</body></html>"""
