"""Users, login sessions and share links in the metaserver's LMDB (`/v1/accounts/{op}`).

Three tables of msgspec-JSON records: `users` (name -> User), `sessions` (id -> Session),
`shares` (id -> Share). Mutations go through the group committer like every filesystem call,
so an answered change is durable and reaches standbys and backups with the namespace. The
rules enforced here are those that must hold whichever gateway asks: a name and a uid belong to
one user; a share link is counted and refused (expired, revoked, used up) by this server's
clock in the same transaction that counts it, so two gateways cannot both serve a link's last
download.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from chunkfs.errors import FsError
from chunkfs.httpserver import json_response, read_body
from chunkfs.metaserver.db import GroupCommitter, MetaDB, Table, Txn
from chunkfs.protocol import accounts as a

REVOKED_KEPT_S = 30 * 86400  # a revoked or expired link still answers "gone" (410) this long


class Accounts:
    def __init__(self, db: MetaDB) -> None:
        self.db = db

    # ---- records ------------------------------------------------------------------------------------
    @staticmethod
    def _get(txn: Txn, table: Table, key: str, record_type: type[Any], what: str) -> Any:
        value = txn.get(key.encode(), db=table)
        if value is None:
            raise FsError(errno.ENOENT, f"no {what} {key!r}")
        return msgspec.json.decode(value, type=record_type)

    @staticmethod
    def _all(txn: Txn, table: Table, record_type: type[Any]) -> list[Any]:
        return [msgspec.json.decode(value, type=record_type) for _key, value in txn.cursor(db=table)]

    @staticmethod
    def _put(txn: Txn, table: Table, key: str, record: msgspec.Struct) -> None:
        txn.put(key.encode(), msgspec.json.encode(record), db=table)

    # ---- users --------------------------------------------------------------------------------------
    def users(self, txn: Txn, _req: None) -> list[a.User]:
        return self._all(txn, self.db.users, a.User)

    def user(self, txn: Txn, req: a.NameReq) -> a.User:
        user: a.User = self._get(txn, self.db.users, req.name, a.User, "user")
        return user

    def add_user(self, txn: Txn, user: a.User) -> a.User:
        for other in self.users(txn, None):
            if other.name == user.name:
                raise FsError(errno.EEXIST, f"a user named {user.name!r} exists")
            if other.uid == user.uid:
                raise FsError(errno.EEXIST, f"uid {user.uid} belongs to {other.name!r}")
        user.created_at = user.created_at or time.time()
        self._put(txn, self.db.users, user.name, user)
        return user

    def update_user(self, txn: Txn, user: a.User) -> a.User:
        old = self.user(txn, a.NameReq(user.name))
        if user.uid != old.uid:
            raise FsError(errno.EINVAL, "a user's uid does not change (files on every mount carry it)")
        user.created_at = old.created_at
        self._put(txn, self.db.users, user.name, user)
        if user.disabled:
            self._end_sessions_of(txn, user.name)
        return user

    def remove_user(self, txn: Txn, req: a.NameReq) -> a.User:
        user = self.user(txn, req)
        txn.delete(user.name.encode(), db=self.db.users)
        self._end_sessions_of(txn, user.name)
        return user

    def _end_sessions_of(self, txn: Txn, name: str) -> None:
        for session in self._all(txn, self.db.sessions, a.Session):
            if session.user == name:
                txn.delete(session.id.encode(), db=self.db.sessions)

    # ---- sessions -----------------------------------------------------------------------------------
    def session(self, txn: Txn, req: a.IdReq) -> a.Session:
        session: a.Session = self._get(txn, self.db.sessions, req.id, a.Session, "session")
        if session.expires_at < time.time():
            raise FsError(errno.ENOENT, "the session has expired")
        return session

    def add_session(self, txn: Txn, session: a.Session) -> a.Session:
        user = self.user(txn, a.NameReq(session.user))
        if user.disabled:
            raise FsError(errno.EACCES, f"user {user.name!r} is disabled")
        self._expire_sessions(txn)
        self._put(txn, self.db.sessions, session.id, session)
        return session

    def update_session(self, txn: Txn, session: a.Session) -> a.Session:
        old = self.session(txn, a.IdReq(session.id))
        if old.user != session.user:
            raise FsError(errno.EINVAL, "a session's user does not change")
        self._put(txn, self.db.sessions, session.id, session)
        return session

    def remove_session(self, txn: Txn, req: a.IdReq) -> a.Session:
        session: a.Session = self._get(txn, self.db.sessions, req.id, a.Session, "session")
        txn.delete(req.id.encode(), db=self.db.sessions)
        return session

    def _expire_sessions(self, txn: Txn) -> None:
        """Sessions past their expiry go when a new one comes: the table stays as small as the
        logins of the last refresh period."""
        now = time.time()
        for session in self._all(txn, self.db.sessions, a.Session):
            if session.expires_at < now:
                txn.delete(session.id.encode(), db=self.db.sessions)

    # ---- share links --------------------------------------------------------------------------------
    def shares(self, txn: Txn, req: a.SharesReq) -> list[a.Share]:
        shares: list[a.Share] = self._all(txn, self.db.shares, a.Share)
        return [s for s in shares if req.owner is None or s.owner == req.owner]

    def share(self, txn: Txn, req: a.IdReq) -> a.Share:
        share: a.Share = self._get(txn, self.db.shares, req.id, a.Share, "share")
        return share

    def add_share(self, txn: Txn, share: a.Share) -> a.Share:
        if txn.get(share.id.encode(), db=self.db.shares) is not None:
            raise FsError(errno.EEXIST, "a share with this id exists")
        now = time.time()
        if share.expires_at <= now:
            raise FsError(errno.EINVAL, "the link would have expired already")
        for old in self._all(txn, self.db.shares, a.Share):  # forget links long gone
            if old.expires_at + REVOKED_KEPT_S < now:  # revoking set expires_at to the revocation's time
                txn.delete(old.id.encode(), db=self.db.shares)
        share.created_at, share.downloads, share.revoked = now, 0, False
        self._put(txn, self.db.shares, share.id, share)
        return share

    def revoke_share(self, txn: Txn, req: a.IdReq) -> a.Share:
        share = self.share(txn, req)
        share.revoked = True
        share.expires_at = min(share.expires_at, time.time())
        self._put(txn, self.db.shares, share.id, share)
        return share

    def use_share(self, txn: Txn, req: a.ShareUseReq) -> a.ShareUse:
        value = txn.get(req.id.encode(), db=self.db.shares)
        if value is None:
            return a.ShareUse(None, "unknown")
        share = msgspec.json.decode(value, type=a.Share)
        if share.revoked:
            return a.ShareUse(share, "revoked")
        if share.expires_at <= time.time():
            return a.ShareUse(share, "expired")
        if share.max_downloads and share.downloads >= share.max_downloads:
            return a.ShareUse(share, "exhausted")
        if req.count:
            share.downloads += 1
            self._put(txn, self.db.shares, share.id, share)
        return a.ShareUse(share)


# op -> (its request record or None, whether it changes anything, the method that runs it)
OPERATIONS: dict[str, tuple[type[Any] | None, bool, Callable[[Accounts], Callable[[Txn, Any], Any]]]] = {
    "users": (None, False, lambda s: s.users),
    "user": (a.NameReq, False, lambda s: s.user),
    "add_user": (a.User, True, lambda s: s.add_user),
    "update_user": (a.User, True, lambda s: s.update_user),
    "remove_user": (a.NameReq, True, lambda s: s.remove_user),
    "session": (a.IdReq, False, lambda s: s.session),
    "add_session": (a.Session, True, lambda s: s.add_session),
    "update_session": (a.Session, True, lambda s: s.update_session),
    "remove_session": (a.IdReq, True, lambda s: s.remove_session),
    "shares": (a.SharesReq, False, lambda s: s.shares),
    "share": (a.IdReq, False, lambda s: s.share),
    "add_share": (a.Share, True, lambda s: s.add_share),
    "revoke_share": (a.IdReq, True, lambda s: s.revoke_share),
    "use_share": (a.ShareUseReq, True, lambda s: s.use_share),
}

ACCOUNTS = web.AppKey("accounts", Accounts)
COMMITTER = web.AppKey("accounts_committer", GroupCommitter)


async def accounts_operation(request: web.Request) -> web.Response:
    op = request.match_info["op"]
    if op not in OPERATIONS:
        raise FsError(errno.ENOSYS, f"unknown accounts operation {op!r}")
    record_type, mutates, bind = OPERATIONS[op]
    req = None if record_type is None else await read_body(request, record_type)
    accounts = request.app[ACCOUNTS]
    if mutates:
        return json_response(await request.app[COMMITTER].run_small(bind(accounts), req))
    with accounts.db.read() as txn:
        return json_response(bind(accounts)(txn, req))


def add_routes(app: web.Application, db: MetaDB, committer: GroupCommitter) -> None:
    app[ACCOUNTS] = Accounts(db)
    app[COMMITTER] = committer
    app.router.add_post("/v1/accounts/{op}", accounts_operation)
