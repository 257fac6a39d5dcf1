"""People and what they hand out, kept by the metaserver: users, login sessions, share links.

The records and the metaserver's client for `/v1/accounts/{op}`. The metaserver only stores
them (durably, in its LMDB, so they are in backups and on standbys like the namespace) and
applies the rules that must hold across gateways: a name and a uid are taken once; a share
link's download count goes up atomically and is refused past its expiry or count, by the
metaserver's clock. Passwords arrive already hashed (argon2id, `chunkfs.passwords`): the
metaserver never sees one.

Errors are the metaserver's `FsError`s: ENOENT (no such user, share or session), EEXIST (a name
or uid taken), EINVAL (a record that breaks a rule).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.metaserver_addresses import MetaserverAddresses
from chunkfs.protocol.records import Ino, Uid

T = TypeVar("T")

UserName = Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]  # useradd's rule (NAME_REGEX)
RecordId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
PasswordHash = Annotated[str, Meta(max_length=512)]
ClusterPath = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^/")]
Timestamp = Annotated[float, Meta(ge=0, le=1e11)]  # seconds since the epoch


class User(Struct, kw_only=True):
    """A person: the same uid/gid/groups on every mount and at the gateway."""

    name: UserName
    uid: Uid
    gid: Uid
    groups: list[Uid] = []
    home: ClusterPath
    password_hash: PasswordHash = ""  # argon2id, PHC string; "": no login (keys only)
    disabled: bool = False
    created_at: Timestamp = 0.0


class Session(Struct, kw_only=True):
    """A login: what a refresh token renews and a logout ends."""

    id: RecordId
    user: UserName
    refresh_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]  # of the current refresh token
    created_at: Timestamp
    expires_at: Timestamp


class Share(Struct, kw_only=True):
    """A share link. Its `id` is derived from the link's token (`share_id`), so the metaserver
    never holds a token: nobody reading the database or a listing can make a working link."""

    id: RecordId
    path: ClusterPath
    ino: Ino  # the file the link was made for: another file put at the path later is not served
    is_dir: bool
    owner: Annotated[str, Meta(max_length=64)]  # the user who made it ("" for an admin's `chunkfs share`)
    uid: Uid  # downloads act as this identity, so the namespace's permissions still decide
    gid: Uid
    groups: list[Uid] = []
    created_at: Timestamp = 0.0
    expires_at: Timestamp
    password_hash: PasswordHash = ""
    max_downloads: Annotated[int, Meta(ge=0, le=2**31)] = 0  # 0: no limit
    downloads: Annotated[int, Meta(ge=0, le=2**62)] = 0
    revoked: bool = False


def share_id(token: str) -> str:
    """A link's id: the first 128 bits of its token's SHA-256 (the token is 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def new_share_token() -> tuple[str, str]:
    """A new link's token (what its URL carries) and id (what the metaserver keeps)."""
    token = secrets.token_urlsafe(32)
    return token, share_id(token)


class NameReq(Struct):
    name: UserName


class IdReq(Struct):
    id: RecordId


class SharesReq(Struct):
    owner: Annotated[str, Meta(max_length=64)] | None = None  # None: every share


class ShareUseReq(Struct):
    id: RecordId
    count: bool  # a download that starts at byte 0 counts; a resumed range or a HEAD does not


class ShareUse(Struct):
    """The answer to a use of a link: `refused` is "" (served: `share` as counted) or why not."""

    share: Share | None
    refused: str = ""  # "expired", "revoked", "exhausted", or "unknown"


class AccountsClient:
    """One method per operation of `/v1/accounts/{op}` (signed like every call to the metaserver)."""

    def __init__(self, http: SignedHttp, servers: MetaserverAddresses) -> None:
        """`servers`: the metaserver(s), as a MetaClient has them (`meta.servers`: calls follow
        the primary across failovers)."""
        self.http, self.servers = http, servers

    async def _call(self, op: str, request: Any, reply_type: type[T]) -> T:
        response = await self.http.request("POST", f"/v1/accounts/{op}", content=msgspec.json.encode(request),
                                           headers={"Content-Type": "application/json"}, servers=self.servers)
        return msgspec.json.decode(response.content, type=reply_type)

    # ---- users --------------------------------------------------------------------------------------
    async def users(self) -> list[User]:
        return await self._call("users", None, list[User])

    async def user(self, name: str) -> User:
        return await self._call("user", NameReq(name), User)

    async def add_user(self, user: User) -> User:
        return await self._call("add_user", user, User)

    async def update_user(self, user: User) -> User:
        return await self._call("update_user", user, User)

    async def remove_user(self, name: str) -> User:
        """Also ends the user's sessions (their tokens stop working at their next refresh)."""
        return await self._call("remove_user", NameReq(name), User)

    # ---- sessions -----------------------------------------------------------------------------------
    async def add_session(self, session: Session) -> Session:
        return await self._call("add_session", session, Session)

    async def session(self, session_id: str) -> Session:
        return await self._call("session", IdReq(session_id), Session)

    async def update_session(self, session: Session) -> Session:
        return await self._call("update_session", session, Session)

    async def remove_session(self, session_id: str) -> Session:
        return await self._call("remove_session", IdReq(session_id), Session)

    # ---- share links --------------------------------------------------------------------------------
    async def add_share(self, share: Share) -> Share:
        return await self._call("add_share", share, Share)

    async def shares(self, owner: str | None = None) -> list[Share]:
        return await self._call("shares", SharesReq(owner), list[Share])

    async def share(self, share_id: str) -> Share:
        return await self._call("share", IdReq(share_id), Share)

    async def revoke_share(self, share_id: str) -> Share:
        return await self._call("revoke_share", IdReq(share_id), Share)

    async def use_share(self, share_id: str, count: bool) -> ShareUse:
        return await self._call("use_share", ShareUseReq(share_id, count), ShareUse)
