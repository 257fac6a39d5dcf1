"""`chunkfs`: the command line.

- `local_cluster.py`: `up` and `down` (a whole cluster on this machine).
- `admin.py`: `status`, `servers`, `goal`, `dedup`, `info`, `locks` (talk to a running cluster).
- `fsck_cmd.py`, `gc_cmd.py`: `fsck` (every file's chunks checked) and `gc` (unreferenced chunks removed).
- `output.py`: tables, `--json`, progress bars.
- `backup_cmd.py`: `backup` (a consistent copy of the metaserver's database) and `restore`.
- `drain_cmd.py`: `drain` (empty a chunkserver before taking it away).
- `mount_cmd.py`: `mount` and `install` (clients and the mount(8) helper).
- `deploy.py`: `config-example` and `install --units` (running the daemons under systemd).
- `gateway_cmd.py`: `gateway key add|list|remove` (the S3/REST gateway's access keys).
- `metaserver_cmd.py`: `metaserver switchover` (move the primary role, with etcd failover).
- `user_cmd.py`: `user add|list|passwd|disable|remove|keys`; `share_cmd.py`: `share PATH`,
  `share list|revoke` (people and their share links, kept by the metaserver).
- `credentials_cmd.py`: `credentials add|list|revoke` (the role keys); `certs_cmd.py`: `certs init` (TLS).
- `quota_cmd.py`: `quota set|get|list|remove` (directory quotas on bytes and inodes).
- `trash_cmd.py`: `trash list|restore|purge`, `trash-time` (removed files kept for a while);
  `amounts.py`: the sizes, counts and durations they take.
- `snapshot_cmd.py`: `snapshot` (a copy of a tree that shares its chunks, `--read-only`), `snapshot-remove`.
- `files_cmd.py`: `put`, `get`, `cat`, `ls`, `rm`, `size`, `mkdir`, `mv` (files, straight through
  `chunkfs.client`); `transfer.py` plans and runs put/get; `client_edge.py` maps their errors to exit codes.

A command's module is imported only when that command runs (`COMMANDS` names where each lives):
the admin and cluster commands pull in the daemons' code (aiohttp, the metaserver), which a
`chunkfs put` has no use for. Importing all of it cost ~0.8 s of CPU at every start of the CLI
(`python -X importtime`), against ~0.3 s for what a file command needs.
"""

from __future__ import annotations

import importlib
import sys

import click

COMMANDS = {
    "up": "local_cluster:up", "down": "local_cluster:down",
    "status": "admin:status", "servers": "admin:servers", "goal": "admin:goal", "dedup": "admin:dedup", "info": "admin:info",
    "locks": "admin:locks",
    "fsck": "fsck_cmd:fsck", "gc": "gc_cmd:gc", "drain": "drain_cmd:drain",
    "mount": "mount_cmd:mount", "install": "mount_cmd:install", "config-example": "deploy:config_example",
    "bench": "bench_cmd:bench", "backup": "backup_cmd:backup", "restore": "backup_cmd:restore",
    "gateway": "gateway_cmd:gateway", "user": "user_cmd:user", "share": "share_cmd:share",
    "credentials": "credentials_cmd:credentials", "certs": "certs_cmd:certs",
    "quota": "quota_cmd:quota",
    "trash": "trash_cmd:trash", "trash-time": "trash_cmd:trash_time", "snapshot": "snapshot_cmd:snapshot",
    "snapshot-remove": "snapshot_cmd:snapshot_remove",
    "metaserver": "metaserver_cmd:metaserver",
    **{name: f"files_cmd:{name}" for name in ("put", "get", "cat", "ls", "rm", "size", "mkdir", "mv")},
}
"""Command name -> `module:attribute` under `chunkfs.cli`."""


class LazyCommands(click.Group):
    """A group whose commands are imported when looked up (click's documented pattern for
    lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where.split(":")
        command = getattr(importlib.import_module(f"chunkfs.cli.{module}"), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise RuntimeError(f"chunkfs.cli.{where} is not the command {cmd_name!r}")
        return command


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chunkfs")
def cli() -> None:
    """chunkfs: a distributed filesystem you mount like any other."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
