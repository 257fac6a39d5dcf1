"""`chunkfs certs init`: the cluster CA and a certificate for each part (see `chunkfs.tls`)."""

from __future__ import annotations

from pathlib import Path

import click

from chunkfs.cli.cluster_access import DEFAULT_DIR
from chunkfs.tls import NAMES, default_hosts, init_certs


@click.group()
def certs() -> None:
    """TLS certificates of the cluster."""


@certs.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR / "tls", show_default=True,
              help="Where the CA and the certificates go (every daemon's tls_dir).")
@click.option("--host", "hosts", multiple=True,
              help="A host name or address the daemons are reached by (repeat) [default: localhost, 127.0.0.1, "
                   "::1 and this host's name].")
@click.option("--name", "names", multiple=True, help=f"A certificate to make [default: {', '.join(NAMES)}].")
def init(directory: Path, hosts: tuple[str, ...], names: tuple[str, ...]) -> None:
    """Make the cluster CA (unless there is one) and the certificates not made yet."""
    written = init_certs(directory, names or NAMES, list(hosts) or default_hosts())
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo(f"{directory}: every certificate is there already")
