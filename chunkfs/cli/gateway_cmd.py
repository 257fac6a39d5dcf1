"""`chunkfs gateway key add|list|remove`: the gateway's access keys.

The keys file and the cluster secret (which the secrets are derived with, see
chunkfs/gateway/keys.py) are the local cluster's (`--dir`, as `chunkfs up` made them), or given
with `--keys-file` and `--secret-file` (a node running chunkfs-gateway.service: its defaults).
A running gateway sees a change at its next request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from chunkfs import auth
from chunkfs.cli.cluster_access import DEFAULT_DIR, fail, local_cluster_file
from chunkfs.cli.output import console, echo_json
from chunkfs.gateway.keys import KeyStore, KeyStoreError
from chunkfs.gateway.main import DEFAULT_KEYS_FILE


def local_keys_file(data_dir: Path) -> Path:
    """Where a local cluster's gateway keeps its keys (`chunkfs up` passes it to the gateway)."""
    return data_dir / "gateway" / "keys.json"


def key_store(data_dir: Path, keys_file: Path | None, secret_file: Path | None) -> tuple[KeyStore, Path]:
    info = local_cluster_file(data_dir.absolute())
    if keys_file is None and info.exists():
        keys_file = local_keys_file(data_dir.absolute())
        cluster = json.loads(info.read_text())
        # the key the gateway derives access-key secrets with: its credential under `up --roles`
        secret_file = secret_file or Path((cluster.get("gateway") or {}).get("secret_file") or cluster["secret_file"])
    return KeyStore(keys_file or DEFAULT_KEYS_FILE), secret_file or Path("/etc/chunkfs/secret")


def _options(fn):
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    fn = click.option("--secret-file", type=click.Path(path_type=Path), help="Cluster secret file.")(fn)
    fn = click.option("--keys-file", type=click.Path(path_type=Path),
                      help=f"The gateway's keys file [default: the local cluster's, else {DEFAULT_KEYS_FILE}].")(fn)
    fn = click.option("--dir", "data_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                      show_default=True, help="Local cluster directory (from `chunkfs up`).")(fn)
    return fn


@click.group()
def gateway() -> None:
    """The S3/REST gateway."""


@gateway.group()
def key() -> None:
    """Access keys: who an S3 or REST request acts as."""


@key.command("add")
@click.argument("name")
@click.option("--uid", type=click.IntRange(0), default=None, help="uid the key's requests act as [default: yours].")
@click.option("--gid", type=click.IntRange(0), default=None, help="gid they act as [default: yours].")
@_options
def add(name: str, uid: int | None, gid: int | None, data_dir: Path, keys_file: Path | None, secret_file: Path | None,
        as_json: bool) -> None:
    """Make an access key NAME; prints its id and secret (the secret is not stored: it is derived
    again from the cluster secret whenever needed)."""
    store, secret_path = key_store(data_dir, keys_file, secret_file)
    try:
        server_key = auth.load_secret(secret_path)
        made = store.add(name, os.getuid() if uid is None else uid, os.getgid() if gid is None else gid)
    except (OSError, ValueError, KeyStoreError) as exc:
        fail(str(exc))
    record = {"name": made.name, "access_key_id": made.access_key_id, "secret_access_key": made.secret(server_key),
              "uid": made.uid, "gid": made.gid}
    if as_json:
        echo_json(record)
        return
    for field, value in record.items():
        console.print(f"{field:18} {value}")


@key.command("list")
@_options
def list_keys(data_dir: Path, keys_file: Path | None, secret_file: Path | None, as_json: bool) -> None:
    """The access keys (ids and who they act as; never the secrets)."""
    store, _ = key_store(data_dir, keys_file, secret_file)
    records = [{"name": k.name, "access_key_id": k.access_key_id, "uid": k.uid, "gid": k.gid} for k in store.all()]
    if as_json:
        echo_json(records)
        return
    for r in records:
        console.print(f"{r['name']:20} {r['access_key_id']}  uid={r['uid']} gid={r['gid']}")


@key.command("remove")
@click.argument("name")
@_options
def remove(name: str, data_dir: Path, keys_file: Path | None, secret_file: Path | None, as_json: bool) -> None:
    """Remove the access key NAME (or with that id): its requests fail from now on."""
    store, _ = key_store(data_dir, keys_file, secret_file)
    try:
        gone = store.remove(name)
    except (OSError, KeyStoreError) as exc:
        fail(str(exc))
    if as_json:
        echo_json({"removed": gone.name, "access_key_id": gone.access_key_id})
    else:
        console.print(f"removed {gone.name} ({gone.access_key_id})")
