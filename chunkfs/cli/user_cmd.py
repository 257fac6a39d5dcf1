"""`chunkfs user add|list|passwd|disable|enable|remove|keys`: the cluster's users.

Users are kept by the metaserver (`chunkfs.protocol.accounts`), so every node sees the same
names and numeric ids: a file a user uploads on the web shows their uid on every mount, and
`ls -l` there shows their name where /etc/passwd has the same uid. Passwords are hashed here
(argon2id, `chunkfs.passwords`) before they leave this process.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import msgspec

import chunkfs.client
from chunkfs.cli import gateway_cmd
from chunkfs.cli.cluster_access import ClusterAccess, access_from, common_options, fail, run_with_meta
from chunkfs.cli.output import console, echo_json
from chunkfs.errors import FsError
from chunkfs.passwords import PasswordRuleError, check_new_password, check_user_name, hash_password
from chunkfs.protocol.accounts import AccountsClient, User
from chunkfs.protocol.meta_client import MetaClient

FIRST_UID = 1000  # as useradd: below are system accounts
HOME_ROOT = "/home"


def _run(access: ClusterAccess, fn: Callable[[AccountsClient], Awaitable[Any]]) -> Any:
    return run_with_meta(access, lambda meta: fn(accounts_of(meta)))


def accounts_of(meta: MetaClient) -> AccountsClient:
    return AccountsClient(meta.http, meta.servers)


def _public(user: User) -> dict[str, Any]:
    """A user as commands print it: never the password hash."""
    record = msgspec.to_builtins(user)
    record.pop("password_hash")
    record["can_log_in"] = bool(user.password_hash) and not user.disabled
    return record


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        check_new_password(password)
    except PasswordRuleError as exc:
        fail(str(exc))
    return password


def _print(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(record)
        return
    for field, value in record.items():
        console.print(f"{field:12} {value}")


@click.group()
def user() -> None:
    """Users: who logs in on the web and whose uid/gid files carry."""


@user.command("add")
@click.argument("name")
@click.option("--uid", type=click.IntRange(0), help=f"Numeric user id [default: the next free from {FIRST_UID}; "
              "0 makes an admin, who sees the web page's admin view].")
@click.option("--gid", type=click.IntRange(0), help="Primary group id [default: the uid].")
@click.option("--groups", default="", help="Supplementary group ids, comma-separated.")
@click.option("--home", help=f"Home directory in the cluster [default: {HOME_ROOT}/NAME].")
@click.option("--home-mode", default="0700", show_default=True, help="Mode of a home directory made by add (octal).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--no-password", is_flag=True, help="No web login (access keys only).")
@common_options
def add(name: str, uid: int | None, gid: int | None, groups: str, home: str | None, home_mode: str,
        password_stdin: bool, no_password: bool, data_dir: Path, metaserver: str | None, secret_file: Path | None,
        as_json: bool) -> None:
    """Add user NAME and make their home directory (owned by them, mode 0700)."""
    try:
        check_user_name(name)
        group_ids = [int(g) for g in groups.split(",") if g.strip()]
        mode = int(home_mode, 8)
    except PasswordRuleError as exc:
        fail(str(exc))
    except ValueError:
        fail("--groups takes numbers separated by commas, --home-mode an octal mode")
    password_hash = "" if no_password else hash_password(_read_password(password_stdin))
    access = access_from(metaserver, secret_file, data_dir)

    async def job(accounts: AccountsClient) -> User:
        chosen = uid if uid is not None else max([FIRST_UID - 1, *(u.uid for u in await accounts.users())]) + 1
        made = await accounts.add_user(User(name=name, uid=chosen, gid=chosen if gid is None else gid,
                                            groups=group_ids, home=home or f"{HOME_ROOT}/{name}",
                                            password_hash=password_hash))
        try:
            await _make_home(access, made, mode)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO, f"user {name} added, but not their home {made.home}: "
                                                   f"{exc.strerror}") from None
        return made

    _print(_public(_run(access, job)), as_json)


async def _make_home(access: ClusterAccess, made: User, mode: int) -> None:
    """The home directory, made as root and given to the user; one that exists is left as it is."""
    async with chunkfs.client.open_filesystem(access.metaserver, access.secret_file, uid=0, gid=0, groups=(),
                                              retry_s=5) as fs:
        parent = made.home.rsplit("/", 1)[0] or "/"
        try:
            await fs.stat(parent)
        except FileNotFoundError:
            await fs.mkdir(parent, 0o755)
        try:
            await fs.mkdir(made.home, mode)
        except FileExistsError:
            return
        await fs.chmod(made.home, mode)  # not narrowed by a umask
        await fs.chown(made.home, made.uid, made.gid)


@user.command("list")
@common_options
def list_users(data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Every user (never a password hash)."""
    users = _run(access_from(metaserver, secret_file, data_dir), lambda accounts: accounts.users())
    records = [_public(u) for u in sorted(users, key=lambda u: u.uid)]
    if as_json:
        echo_json(records)
        return
    for r in records:
        state = "disabled" if r["disabled"] else "" if r["can_log_in"] else "no password"
        console.print(f"{r['name']:20} uid={r['uid']} gid={r['gid']} groups={r['groups']} home={r['home']} {state}")


def _change(name: str, access: ClusterAccess, change: Callable[[User], None]) -> User:
    async def job(accounts: AccountsClient) -> User:
        found = await accounts.user(name)
        change(found)
        return await accounts.update_user(found)
    result: User = _run(access, job)
    return result


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@common_options
def passwd(name: str, password_stdin: bool, data_dir: Path, metaserver: str | None, secret_file: Path | None,
           as_json: bool) -> None:
    """Set NAME's password (their sessions go on until they end or the user is disabled)."""
    password_hash = hash_password(_read_password(password_stdin))

    def change(found: User) -> None:
        found.password_hash = password_hash
    _print(_public(_change(name, access_from(metaserver, secret_file, data_dir), change)), as_json)


@user.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the user again.")
@common_options
def disable(name: str, enable: bool, data_dir: Path, metaserver: str | None, secret_file: Path | None,
            as_json: bool) -> None:
    """Stop NAME logging in; their sessions end now (their files stay)."""
    def change(found: User) -> None:
        found.disabled = not enable
    _print(_public(_change(name, access_from(metaserver, secret_file, data_dir), change)), as_json)


@user.command("remove")
@click.argument("name")
@common_options
def remove(name: str, data_dir: Path, metaserver: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Remove user NAME and end their sessions (their files and home directory stay)."""
    gone = _run(access_from(metaserver, secret_file, data_dir), lambda accounts: accounts.remove_user(name))
    if as_json:
        echo_json({"removed": gone.name, "uid": gone.uid})
    else:
        console.print(f"removed {gone.name} (uid {gone.uid}); {gone.home} is kept")


@user.command("keys")
@click.argument("name")
@click.option("--keys-file", type=click.Path(path_type=Path), help="The gateway's keys file.")
@common_options
def keys(name: str, keys_file: Path | None, data_dir: Path, metaserver: str | None, secret_file: Path | None,
         as_json: bool) -> None:
    """The gateway access keys that act as NAME (by their uid)."""
    found = _run(access_from(metaserver, secret_file, data_dir), lambda accounts: accounts.user(name))
    store, _ = gateway_cmd.key_store(data_dir, keys_file, secret_file)
    records = [{"name": k.name, "access_key_id": k.access_key_id, "uid": k.uid, "gid": k.gid}
               for k in store.all() if k.uid == found.uid]
    if as_json:
        echo_json(records)
        return
    for r in records:
        console.print(f"{r['name']:20} {r['access_key_id']}  uid={r['uid']} gid={r['gid']}")
    if not records:
        console.print(f"no access key acts as {name} (chunkfs gateway key add NAME --uid {found.uid} --gid {found.gid})")

