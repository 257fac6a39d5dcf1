"""`chunkfs`: the command line.

- `local_cluster.py`: `up` and `down` (a whole cluster on this machine).
- `admin.py`: `status`, `servers`, `goal`, `info`, `locks` (talk to a running cluster).
- `fsck_cmd.py`, `gc_cmd.py`: `fsck` (every file's chunks checked) and `gc` (unreferenced chunks removed).
- `output.py`: tables, `--json`, progress bars.
- `backup_cmd.py`: `backup` (a consistent copy of the metaserver's database) and `restore`.
- `drain_cmd.py`: `drain` (empty a chunkserver before taking it away).
- `mount_cmd.py`: `mount` and `install` (clients and the mount(8) helper).
- `deploy.py`: `config-example` and `install --units` (running the daemons under systemd).
- `gateway_cmd.py`: `gateway key add|list|remove` (the S3/REST gateway's access keys).
- `files_cmd.py`: `put`, `get`, `cat`, `ls`, `rm`, `size`, `mkdir`, `mv` (files, straight through
  `chunkfs.client`); `transfer.py` plans and runs put/get; `client_edge.py` maps their errors to exit codes.
"""

from __future__ import annotations

import sys

import click

from chunkfs.cli import (admin, backup_cmd, bench_cmd, deploy, drain_cmd, files_cmd, fsck_cmd, gateway_cmd, gc_cmd,
                         local_cluster, mount_cmd)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chunkfs")
def cli() -> None:
    """chunkfs: a distributed filesystem you mount like any other."""


for command in (local_cluster.up, local_cluster.down, admin.status, admin.servers, admin.goal, admin.info, admin.locks,
                fsck_cmd.fsck, gc_cmd.gc, drain_cmd.drain,
                mount_cmd.mount, mount_cmd.install, deploy.config_example, bench_cmd.bench, backup_cmd.backup,
                backup_cmd.restore, gateway_cmd.gateway, *files_cmd.COMMANDS):
    cli.add_command(command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
