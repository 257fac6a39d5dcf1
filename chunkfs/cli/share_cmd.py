"""`chunkfs share PATH --expires 7d`, `chunkfs share list`, `chunkfs share revoke ID`: share
links made by an admin from the command line (a user makes them on the web page or with
`POST /api/v1/shares`). PATH is a path in the cluster (`/home/alice/report.pdf`). A link made
here downloads as `--user` (their uid/gid/groups), else as the uid/gid running the command, so
the namespace's permissions decide as they do for every other link.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec

import chunkfs.client
from chunkfs.cli.cluster_access import access_from, common_options, fail, local_cluster_file, run_with_meta
from chunkfs.cli.output import console, echo_json
from chunkfs.cli.user_cmd import accounts_of
from chunkfs.gateway.main import REST_PORT_OFFSET
from chunkfs.passwords import PasswordRuleError, check_new_password, hash_password
from chunkfs.protocol.accounts import Share, new_share_token
from chunkfs.protocol.meta_client import MetaClient

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    match = DURATION.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r}: a number and s, m, h, d or w (90s, 10m, 7d)")
    return float(match.group(1)) * UNIT_S[match.group(2)]


class ShareCommands(click.Group):
    """`chunkfs share PATH ...` makes a link; `list` and `revoke` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


def _gateway_url(data_dir: Path, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    info = local_cluster_file(data_dir.absolute())
    if info.exists():
        cluster = json.loads(info.read_text())
        gateway = cluster.get("gateway")
        if gateway:  # a local cluster with --tls: its gateway serves HTTPS
            return f"{'https' if cluster.get('tls_dir') else 'http'}://{gateway['rest']}"
    return f"http://127.0.0.1:{9520 + REST_PORT_OFFSET}"


def _public(share: Share) -> dict[str, Any]:
    record = msgspec.to_builtins(share)
    record["password"] = bool(record.pop("password_hash"))
    return record


@click.group(cls=ShareCommands)
def share() -> None:
    """Share links: `chunkfs share PATH --expires 7d`, `share list`, `share revoke ID`."""


@share.command("create")
@click.argument("path")
@click.option("--expires", default="7d", show_default=True, help="How long the link works: 90s, 10m, 12h, 7d, 2w.")
@click.option("--max-downloads", type=click.IntRange(0), default=0, help="Downloads allowed (0: any number).")
@click.option("--password-stdin", is_flag=True, help="Protect the link with a password read from standard input.")
@click.option("--user", "user_name", help="The user the downloads act as (and who owns the link).")
@click.option("--url", help="The gateway's REST address for the printed link [default: the local cluster's].")
@common_options
def create(path: str, expires: str, max_downloads: int, password_stdin: bool, user_name: str | None, url: str | None,
           data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Make a link to PATH (a file or a directory in the cluster)."""
    expires_in_s = parse_duration(expires)
    password_hash = ""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            check_new_password(password)
        except PasswordRuleError as exc:
            fail(str(exc))
        password_hash = hash_password(password)
    access = access_from(metaserver, secret_file, data_dir)
    cluster_path = path if path.startswith("/") else "/" + path

    async def job(meta: MetaClient) -> tuple[Share, str]:
        accounts = accounts_of(meta)
        owner, uid, gid, groups = "", os.getuid(), os.getgid(), list(os.getgroups())
        if user_name:
            found = await accounts.user(user_name)
            owner, uid, gid, groups = found.name, found.uid, found.gid, found.groups
        async with chunkfs.client.open_filesystem(access.metaserver, access.secret_file, uid=uid, gid=gid,
                                                  groups=groups, retry_s=5) as fs:
            try:
                st = await fs.stat(cluster_path)
                if stat.S_ISREG(st.st_mode):
                    await (await fs.open(cluster_path, "rb")).aclose()
            except OSError as exc:
                fail(f"{cluster_path}: {exc.strerror}")
        token, new_id = new_share_token()
        made = await accounts.add_share(Share(id=new_id, path=cluster_path, ino=st.st_ino,
                                              is_dir=stat.S_ISDIR(st.st_mode), owner=owner, uid=uid, gid=gid,
                                              groups=groups, expires_at=time.time() + expires_in_s,
                                              password_hash=password_hash, max_downloads=max_downloads))
        return made, token

    made, token = run_with_meta(access, job)
    link = f"{_gateway_url(data_dir, url)}/s/{token}"
    if as_json:
        echo_json({**_public(made), "url": link})
    else:
        console.print(f"{link}\n(id {made.id}; expires {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(made.expires_at))})",
                      soft_wrap=True)


@share.command("list")
@click.option("--user", "user_name", help="Only the links of this user.")
@common_options
def list_shares(user_name: str | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
                as_json: bool) -> None:
    """Every share link (ids, never the links themselves: they are not stored)."""
    shares = run_with_meta(access_from(metaserver, secret_file, data_dir),
                           lambda meta: accounts_of(meta).shares(user_name))
    records = [_public(s) for s in sorted(shares, key=lambda s: s.created_at)]
    if as_json:
        echo_json(records)
        return
    now = time.time()
    for r in records:
        state = "revoked" if r["revoked"] else "expired" if r["expires_at"] <= now else "active"
        limit = f"/{r['max_downloads']}" if r["max_downloads"] else ""
        console.print(f"{r['id']}  {state:8} {r['owner'] or '(admin)':12} downloads {r['downloads']}{limit}  {r['path']}",
                      soft_wrap=True)


@share.command("revoke")
@click.argument("share_id")
@common_options
def revoke(share_id: str, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Revoke the link with this id: it answers 410 from now on."""
    gone = run_with_meta(access_from(metaserver, secret_file, data_dir),
                         lambda meta: accounts_of(meta).revoke_share(share_id))
    if as_json:
        echo_json(_public(gone))
    else:
        console.print(f"revoked {gone.id} ({gone.path})")
