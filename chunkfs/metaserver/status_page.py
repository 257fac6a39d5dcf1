"""The read-only status page served at `/` (what MooseFS's CGI monitor shows): servers,
capacity, health, chunks under goal, repairs, the clients following the change feed and the
chunk throughput of the last minutes (an inline SVG chart: the page loads nothing else).
Rendered on the server from the same `ClusterStatus` that `chunkfs status` prints; it needs no
secret, like /metrics, and changes nothing."""

from __future__ import annotations

import math
from html import escape

from chunkfs.protocol import records as r

REFRESH_S = 5


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


CHART_W, CHART_H, CHART_LEFT, CHART_BOTTOM = 760, 220, 60, 28
READ_COLOUR, WRITE_COLOUR = "#1f77b4", "#e8710a"


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:.1f} MB/s" if bytes_per_s >= 1e5 else f"{bytes_per_s / 1e3:.0f} kB/s"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`."""
    step = 10 ** math.floor(math.log10(value))
    return next(m * step for m in (1, 2, 5, 10) if m * step >= value)


def throughput_chart(history: r.Throughput | None) -> str:
    """Read and write MB/s over the history window as an SVG line chart, newest at the right."""
    if history is None or not history.samples:
        return '<p id="throughput-empty">No throughput samples yet (one every few seconds).</p>'
    plot_w, plot_h = CHART_W - CHART_LEFT - 10, CHART_H - CHART_BOTTOM - 10
    samples = history.samples
    end, window_s = samples[-1].time, history.window_s
    top = _nice_ceiling(max(1e6, *(max(s.read_bytes_per_s, s.written_bytes_per_s) for s in samples)))

    def point(sample: r.ThroughputSample, value: float) -> str:
        x = CHART_LEFT + plot_w * (1 - (end - sample.time) / window_s)
        return f"{x:.1f},{10 + plot_h * (1 - value / top):.1f}"

    lines = "".join(
        f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2" '
        f'points="{" ".join(point(s, getattr(s, field)) for s in samples)}"/>'
        for name, colour, field in (("read", READ_COLOUR, "read_bytes_per_s"),
                                    ("write", WRITE_COLOUR, "written_bytes_per_s")))
    grid = "".join(
        f'<line x1="{CHART_LEFT}" x2="{CHART_W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        f'<text x="{CHART_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{top * f / 1e6:g} MB/s</text>'
        for f in (0, 0.5, 1) for y in [10 + plot_h * (1 - f)])
    minutes = window_s / 60
    ticks = "".join(
        f'<text x="{CHART_LEFT + plot_w * f:.1f}" y="{CHART_H - 8}" text-anchor="middle">'
        f'{"now" if f == 1 else f"-{minutes * (1 - f):g} min"}</text>' for f in (0, 1 / 3, 2 / 3, 1))
    legend = (f'<text x="{CHART_LEFT + 8}" y="24" fill="{READ_COLOUR}">read {_rate(samples[-1].read_bytes_per_s)}</text>'
              f'<text x="{CHART_LEFT + 160}" y="24" fill="{WRITE_COLOUR}">'
              f'write {_rate(samples[-1].written_bytes_per_s)}</text>')
    return (f'<svg id="throughput" xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
            f'viewBox="0 0 {CHART_W} {CHART_H}" font-size="11" role="img" '
            f'aria-label="chunk bytes read and written per second over the last {minutes:g} minutes">'
            f'{grid}{ticks}{lines}{legend}</svg>')


GATEWAY_MARK = "gateway "  # how a gateway's client core names itself (ClientReport.mountpoint)


def _gateways(status: r.ClusterStatus) -> str:
    """The gateways following the change feed: how many and where they serve S3 and REST."""
    gateways = sorted(c.mountpoint[len(GATEWAY_MARK):] for c in status.clients if c.mountpoint.startswith(GATEWAY_MARK))
    return f"{len(gateways)}" + (": " + "; ".join(gateways) if gateways else "")


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
        ("chunk data", f"{_size(status.chunk_bytes)} logical, {_size(status.stored_bytes)} physical (one replica "
                       f"each): dedup ratio {status.sharing_ratio:.2f}"),
        ("repairs", f"{status.repairs_running} running, {status.chunks_replicated} copies made, "
                    f"{status.corrupt_found} corrupt replicas found"),
        ("pending deletions", str(status.pending_deletions)),
        ("clients mounted", str(clients)),
        ("gateways", _gateways(status)),
        ("file locks", f"{status.locks_held} held, {status.lock_waits} waiting"),
        *((f"quota {q.path.decode(errors='replace')}", f"over its soft limit on {' and '.join(q.over_soft)}: "
           f"{_size(q.used_bytes)}, {q.used_inodes} inodes") for q in status.quotas_over_soft),
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
<h2>Throughput</h2>
{throughput_chart(status.throughput)}
<p>Refreshes every {REFRESH_S} s. The same figures: <code>chunkfs status</code>, <a href="/metrics">/metrics</a>.</p>
</body></html>"""
