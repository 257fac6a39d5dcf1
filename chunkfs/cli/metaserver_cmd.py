"""`chunkfs metaserver switchover`: move the primary role to a standby on purpose (an upgrade,
a machine to take down), with etcd failover configured (the metaserver's failover.py).

The primary gives its leader key up at once; a standby in sync takes it within a fraction of a
second and clients follow (they retry calls answered meanwhile, with their request ids, so
nothing is done twice). The old primary comes back as a standby of the new one.
"""

from __future__ import annotations

from pathlib import Path

import click

from chunkfs.cli.cluster_access import access_from, common_options, fail, run_with_meta
from chunkfs.cli.output import echo_json
from chunkfs.protocol.meta_client import MetaClient


@click.group()
def metaserver() -> None:
    """The metaservers of a cluster with failover."""


@metaserver.command()
@common_options
def switchover(data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Hand the primary role to a standby in sync."""
    access = access_from(metaserver, secret_file, data_dir)

    async def switch(meta: MetaClient) -> str:
        election = (await meta.status()).failover
        if election is None:
            fail("this metaserver has no etcd failover configured: there is no standby to hand over to")
        return await meta.step_down(election.primary)

    old = run_with_meta(access, switch)
    if as_json:
        echo_json({"stepped_down": old})
    else:
        click.echo(f"{old} gave the primary role up; a standby in sync takes it (chunkfs status shows which)")
