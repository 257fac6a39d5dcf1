"""`chunkfs credentials add|list|revoke`: the role keys of the cluster (see `chunkfs.credentials`),
through the metaserver's API, with an admin key or the cluster secret (`--secret-file`, else the
local cluster's).

`add ROLE NAME --out FILE` writes the new credential to FILE (0600), which the daemon or mount of
that role then takes as its `--secret-file`; a client's can carry an export (`--subtree`,
`--read-only`, `--maproot`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from chunkfs.cli.cluster_access import access_from, common_options, fail, run_with_meta
from chunkfs.cli.output import console, echo_json
from chunkfs.credentials import ROLES
from chunkfs.errors import FsError
from chunkfs.protocol import records as r


@click.group()
def credentials() -> None:
    """Role keys: chunkservers, clients, gateways and admins each with their own."""


@credentials.command()
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Write the credential to this file (0600).")
@click.option("--subtree", default="/", show_default=True, help="A client's export: the directory it may reach.")
@click.option("--read-only", is_flag=True, help="A client's export: no changes.")
@click.option("--maproot", type=click.IntRange(-1, 2**32 - 1), default=-1, show_default=True,
              help="A client's export: the uid root acts as (65534: root squash; -1: root stays root).")
@click.option("--goals", default="1-16", show_default=True, metavar="MIN-MAX",
              help="A client's export: the goals it may set.")
@click.option("--network", "networks", multiple=True, metavar="CIDR",
              help="A client's export: a network its requests may come from (repeat; default: any).")
@common_options
def add(role: str, name: str, out: Path | None, subtree: str, read_only: bool, maproot: int, goals: str,
        networks: tuple[str, ...], data_dir: Path, metaserver: str | None, secret_file: Path | None,
        as_json: bool) -> None:
    """Make a key for ROLE named NAME (a second one for the same name rotates it: revoke the old)."""
    access = access_from(metaserver, secret_file, data_dir)
    low, _, high = goals.partition("-")
    try:
        req = r.CredentialReq(role=role, name=name, subtree=subtree, read_only=read_only, maproot=maproot,
                              min_goal=int(low), max_goal=int(high or low), networks=list(networks))
    except (ValueError, FsError) as exc:
        fail(f"--goals {goals} / --network: {exc}")
    made: dict[str, Any] = run_with_meta(access, lambda meta: meta.change_credentials("add", req))
    text = made.pop("credential")
    if out is not None:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            fail(f"{out}: {exc.strerror} (the credential {made['key_id']} was made: revoke it)")
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    if as_json:
        echo_json({**made, **({"file": str(out)} if out else {"credential": text})})
    elif out is not None:
        click.echo(f"{made['key_id']} ({role} {name}) written to {out}")
    else:
        click.echo(text)


@credentials.command(name="list")
@common_options
def list_credentials(data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """The keys (never their secrets)."""
    listing = run_with_meta(access_from(metaserver, secret_file, data_dir), lambda meta: meta.credentials())
    if as_json:
        echo_json(listing)
        return
    table = Table("key id", "role", "name", "export")
    for c in listing:
        export = c.get("export", {})
        table.add_row(c["key_id"], c["role"], c["name"],
                      f"{export.get('subtree', '/')} {'ro' if export.get('read_only') else 'rw'}"
                      + (f" maproot={export['maproot']}" if export.get("maproot", -1) >= 0 else "")
                      + (f" goals={export['min_goal']}-{export['max_goal']}" if "min_goal" in export else "")
                      + (f" from {','.join(export['networks'])}" if export.get("networks") else ""))
    console.print(table)


@credentials.command()
@click.argument("what", nargs=-1, required=True)
@common_options
def revoke(what: tuple[str, ...], data_dir: Path, metaserver: str | None, secret_file: Path | None,
           as_json: bool) -> None:
    """Revoke KEY_ID, or every key of ROLE NAME; refused from the next request on."""
    if len(what) == 1:
        req = r.RevokeReq(key_id=what[0])
    elif len(what) == 2:
        req = r.RevokeReq(role=what[0], name=what[1])
    else:
        fail("revoke KEY_ID, or ROLE NAME", 2)
    gone = run_with_meta(access_from(metaserver, secret_file, data_dir), lambda meta: meta.change_credentials("revoke", req))
    if as_json:
        echo_json(gone)
    elif not gone:
        fail("no such credential")
    else:
        for c in gone:
            click.echo(f"revoked {c['key_id']} ({c['role']} {c['name']})")
