"""`chunkfs`: the command line.

- `local_cluster.py`: `up` and `down` (a whole cluster on this machine).
- `admin.py`: `status`, `goal`, `info` (talk to a running cluster).
- `mount_cmd.py`: `mount` and `install` (clients and the mount(8) helper).
"""

from __future__ import annotations

import sys

import click

from chunkfs.cli import admin, bench_cmd, local_cluster, mount_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chunkfs")
def cli() -> None:
    """chunkfs: a distributed filesystem you mount like any other."""


for command in (local_cluster.up, local_cluster.down, admin.status, admin.goal, admin.info,
                mount_cmd.mount, mount_cmd.install, bench_cmd.bench):
    cli.add_command(command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
