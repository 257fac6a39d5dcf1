"""`chunkfs bench`: time common file workloads in a directory (a chunkfs mount, say) and in
directories to compare it with; the workloads themselves are in `chunkfs.bench`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chunkfs import bench as workloads
from chunkfs.cli.cluster_access import fail

DIRECTORY = click.Path(exists=True, file_okay=False, writable=True, path_type=Path)


def _value(value: float | None, unit: str) -> str:
    if value is None:  # not measured there (the mount's CPU, in a directory that is no mount)
        return "-"
    if unit in ("s", "s/GiB"):
        return f"{value:.2f}"
    if unit == "MiB/s":
        return f"{value:,.1f}"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:,.0f}"


def _ratio(ratio: float | None, higher_is_better: bool) -> str:
    if ratio is None:
        return "-"
    better = ratio >= 1 if higher_is_better else ratio <= 1
    return f"[{'green' if better else 'red'}]{ratio:.2f}×[/]"


def _table(results: list[workloads.DirectoryResult], settings: workloads.BenchSettings) -> Table:
    subject, others = results[0], results[1:]
    caption = "cold: page cache dropped" if subject.page_cache_dropped else "cold: page cache NOT dropped (needs root)"
    if others:
        caption += f"\nratio: {subject.directory.name}/other, green where {subject.directory.name} does better"
    workload = {"data": f"{settings.size_mb} MiB file", "small": f"{settings.files} small files",
                "tree": f"{settings.tree_files}-file tree", "client": "put/get and the API",
                "gateway": "the gateway" if settings.gateway else "no gateway"}
    table = Table(title="chunkfs bench: " + ", ".join(workload[g] for g in workloads.GROUPS if g in settings.groups),
                  caption=caption)
    table.add_column("figure", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    for result in results:
        table.add_column(str(result.directory), justify="right")
    for other in others:
        table.add_column(f"{subject.directory.name}/{other.directory.name}", justify="right")
    compared = [workloads.ratios(subject, other) for other in others]
    for figure in workloads.FIGURES:
        if figure.key not in subject.figures:
            continue
        table.add_row(figure.label, figure.unit,
                      *(_value(r.figures.get(figure.key), figure.unit) for r in results),
                      *(_ratio(c[figure.key], figure.higher_is_better) for c in compared))
    return table


def _as_json(results: list[workloads.DirectoryResult], settings: workloads.BenchSettings) -> str:
    subject = results[0]
    return json.dumps({
        "directory": str(subject.directory),
        "settings": {"size_mb": settings.size_mb, "files": settings.files, "tree_files": settings.tree_files},
        "units": {f.key: f.unit for f in workloads.FIGURES if f.key in subject.figures},
        "results": {str(r.directory): r.figures for r in results},
        "page_cache_dropped": {str(r.directory): r.page_cache_dropped for r in results},
        "ratios": {str(other.directory): workloads.ratios(subject, other) for other in results[1:]},
    }, indent=2)


@click.command()
@click.argument("directory", type=DIRECTORY)
@click.option("--compare", "compare", type=DIRECTORY, multiple=True,
              help="Run the same workloads here too and show DIRECTORY's figures over these (repeatable).")
@click.option("--size-mb", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="Size of the file written and read sequentially, in MiB.")
@click.option("--files", type=click.IntRange(1, 10_000_000), default=1000, show_default=True,
              help="How many 4 KiB files to create, stat and unlink.")
@click.option("--tree-files", type=click.IntRange(1, 10_000_000), default=5000, show_default=True,
              help="How many files the tree copied with cp -a and rsync -a holds.")
@click.option("--only", "groups", type=click.Choice(list(workloads.GROUPS)), multiple=True,
              help="Run only these workloads (repeatable): data (big file), small (create/stat/unlink), "
                   "tree (cp -a, no-op rsync -a), client (cp of a file in and out; on a chunkfs mount also "
                   "chunkfs put/get and the Python API on its cluster), gateway (with --gateway: its S3 "
                   "and REST doors beside the mount). Default: all.")
@click.option("--gateway", default="", metavar="URL",
              help="Also through the gateway of the mount's cluster (group gateway): its S3 address, "
                   "http://HOST:9580 (REST on the next port); needs --gateway-key.")
@click.option("--gateway-key", default="", envvar="CHUNKFS_GATEWAY_KEY", metavar="ID:SECRET",
              help="An access key for --gateway (`chunkfs gateway key add`) [env CHUNKFS_GATEWAY_KEY].")
@click.option("--gateway-clients", type=click.IntRange(0, 64), default=8, show_default=True,
              help="Parallel uploads of --size-mb each while the gateway's RSS is watched (0: skip).")
@click.option("--gateway-list-keys", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True,
              help="Keys in the prefix whose S3 listing (1,000 a page) is timed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON dict instead of a table.")
def bench(directory: Path, compare: tuple[Path, ...], size_mb: int, files: int, tree_files: int,
          groups: tuple[str, ...], gateway: str, gateway_key: str, gateway_clients: int, gateway_list_keys: int,
          as_json: bool) -> None:
    """Time writes, reads, small files and tree copies in DIRECTORY (and each --compare one).

    Everything is made in a scratch directory inside each directory and removed afterwards.
    Cold reads drop the kernel page cache first when run as root.
    """
    directories = [d.absolute() for d in (directory, *compare)]
    if len(set(directories)) != len(directories):
        fail("each directory may be given only once")
    if gateway and not gateway_key:
        fail("--gateway needs --gateway-key ID:SECRET (chunkfs gateway key add NAME)")
    settings = workloads.BenchSettings(size_mb=size_mb, files=files, tree_files=tree_files,
                                       groups=groups or tuple(workloads.GROUPS), gateway=gateway,
                                       gateway_key=gateway_key, gateway_clients=gateway_clients,
                                       gateway_list_keys=gateway_list_keys)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    try:
        with progress:
            task = progress.add_task("making the tree to copy", total=len(directories) * len(workloads.steps_of(settings)))
            results = workloads.run(directories, settings,
                                    lambda done, what: progress.update(task, completed=done, description=what))
    except (OSError, workloads.BenchError) as exc:
        fail(f"bench failed: {exc}")
    if as_json:
        click.echo(_as_json(results, settings))
    else:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 200)  # a file or pipe gets the whole table, unwrapped
        console.print(_table(results, settings))
