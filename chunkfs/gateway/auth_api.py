"""Logging in and out: `/api/v1/auth/` and the user list the web page shows owners with.

    POST /api/v1/auth/login    {"name", "password"} -> access token (JWT), refresh token; also
                               sets them as HttpOnly, SameSite=Strict cookies for the web page
    POST /api/v1/auth/refresh  {"refresh_token"} (or the cookie) -> new tokens; the old refresh
                               token is spent
    POST /api/v1/auth/logout   ends the session of the token (or cookie) that calls it
    GET  /api/v1/auth/me       who the caller is, and the CSRF token for cookie-borne changes
    GET  /api/v1/users         names and ids of every user (as /etc/passwd shows them); an
                               admin (uid 0) also sees homes, groups and the disabled flag
    GET  /api/v1/keys          the gateway's access keys (ids and identities, never secrets;
                               an admin's call)

Wrong name, wrong password and disabled user get the same 401 after the same work (an unknown
name is checked against a dummy hash), so the answer does not tell which names exist.
"""

from __future__ import annotations

import errno
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chunkfs.errors import FsError
from chunkfs.client import AsyncFilesystem
from chunkfs.gateway.callers import ACCESS_COOKIE, REFRESH_COOKIE, Authenticator, caller_in
from chunkfs.gateway.keys import KeyStore
from chunkfs.gateway.login_throttle import LoginThrottle
from chunkfs.gateway.rest_errors import RestError
from chunkfs.gateway.tokens import ACCESS_TTL_S, REFRESH_TTL_S, TokenError, refresh_digest
from chunkfs.passwords import MAX_PASSWORD_CHARS, USER_NAME, dummy_verify, verify_password
from chunkfs.protocol.accounts import AccountsClient, Session, User

REFRESH_COOKIE_PATH = "/api/v1/auth/"
MAX_FORM_BYTES = 16 << 10


async def small_form(request: Request) -> dict[str, Any]:
    """A JSON object or an urlencoded form of a few fields (a login, a share's password)."""
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_FORM_BYTES:
            raise RestError(413, "TooLarge", "the request body is too large")
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
    try:
        values = json.loads(body or b"{}")
    except ValueError:
        raise RestError(400, "BadRequest", "the body is not JSON") from None
    if not isinstance(values, dict):
        raise RestError(400, "BadRequest", "the body is not a JSON object")
    return {str(k): v for k, v in values.items()}


def text_field(values: dict[str, Any], name: str, max_chars: int = 4096) -> str:
    value = values.get(name, "")
    if not isinstance(value, str) or len(value) > max_chars:
        raise RestError(400, "BadRequest", f"{name} must be a string of at most {max_chars} characters")
    return value


class AuthApi:
    def __init__(self, accounts: AccountsClient, authenticator: Authenticator, keys: KeyStore) -> None:
        self.accounts, self.authenticator, self.keys = accounts, authenticator, keys
        self.tokens, self.sessions = authenticator.tokens, authenticator.sessions
        self.throttle = LoginThrottle()

    async def _user(self, name: str) -> User | None:
        try:
            return await self.accounts.user(name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def login(self, request: Request) -> Response:
        values = await small_form(request)
        name, password = text_field(values, "name", 64), text_field(values, "password", MAX_PASSWORD_CHARS)
        address = request.client.host if request.client else "?"
        wait_s = self.throttle.wait_s(name, address)
        if wait_s > 0:
            raise RestError(429, "TooManyFailedLogins", f"too many failed logins: try again in {wait_s:.0f} s")
        user = await self._user(name) if USER_NAME.fullmatch(name) else None  # a bad name: as an unknown one
        if user is None:
            await trio.to_thread.run_sync(dummy_verify, password)
            ok = False
        else:
            ok = await trio.to_thread.run_sync(verify_password, user.password_hash, password) and not user.disabled
        if not ok or user is None:
            self.throttle.failed(name, address)
            raise RestError(401, "LoginFailed", "wrong user name or password (or the user is disabled)")
        self.throttle.succeeded(name)
        session_id = secrets.token_hex(16)
        refresh_token = self.tokens.new_refresh_token(session_id)
        now = time.time()
        await self.accounts.add_session(Session(id=session_id, user=user.name, refresh_sha256=refresh_digest(refresh_token),
                                                created_at=now, expires_at=now + REFRESH_TTL_S))
        return self._tokens(request, user, session_id, refresh_token)

    async def refresh(self, request: Request) -> Response:
        values = await small_form(request)
        refresh_token = text_field(values, "refresh_token", 256) or request.cookies.get(REFRESH_COOKIE, "")
        try:
            session = await self.accounts.session(self.tokens.session_of_refresh(refresh_token))
        except (TokenError, FsError):
            raise RestError(401, "InvalidToken", "not a current refresh token: log in again") from None
        if session.refresh_sha256 != refresh_digest(refresh_token):
            raise RestError(401, "InvalidToken", "this refresh token was used already: log in again")
        user = await self._user(session.user)
        if user is None or user.disabled:
            raise RestError(401, "InvalidToken", "the user is gone or disabled")
        new_refresh = self.tokens.new_refresh_token(session.id)
        session.refresh_sha256 = refresh_digest(new_refresh)
        await self.accounts.update_session(session)
        return self._tokens(request, user, session.id, new_refresh)

    async def logout(self, request: Request) -> Response:
        caller = await self.authenticator.caller_of(request)
        if not caller.session_id:
            raise RestError(400, "NotASession", "an access key has no session to end")
        try:
            await self.accounts.remove_session(caller.session_id)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        self.sessions.ended(caller.session_id)
        response = Response(status_code=204)
        response.delete_cookie(ACCESS_COOKIE, path="/")
        response.delete_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH)
        return response

    async def me(self, request: Request, afs: AsyncFilesystem) -> Response:
        caller = caller_in(request)
        user = await self._user(caller.name) if caller.session_id else None
        return JSONResponse({"name": caller.name, "uid": caller.uid, "gid": caller.gid, "groups": list(caller.groups),
                             "home": user.home if user else "/", "is_admin": caller.is_admin,
                             "csrf_token": self.tokens.csrf_token(caller.session_id) if caller.session_id else None})

    async def users(self, request: Request, afs: AsyncFilesystem) -> Response:
        caller = caller_in(request)
        users = await self.accounts.users()
        if caller.is_admin:
            listed = [{"name": u.name, "uid": u.uid, "gid": u.gid, "groups": u.groups, "home": u.home,
                       "disabled": u.disabled, "can_log_in": bool(u.password_hash)} for u in users]
        else:
            listed = [{"name": u.name, "uid": u.uid, "gid": u.gid} for u in users]
        return JSONResponse({"users": listed})

    async def access_keys(self, request: Request, afs: AsyncFilesystem) -> Response:
        if not caller_in(request).is_admin:
            raise RestError(403, "Forbidden", "only an admin (uid 0) lists the access keys")
        return JSONResponse({"keys": [{"name": k.name, "access_key_id": k.access_key_id, "uid": k.uid, "gid": k.gid}
                                      for k in self.keys.all()]})

    def _tokens(self, request: Request, user: User, session_id: str, refresh_token: str) -> Response:
        access_token, expires_at = self.tokens.access_token(user, session_id)
        response = JSONResponse({"access_token": access_token, "token_type": "Bearer",
                                 "expires_in": int(expires_at - time.time()), "refresh_token": refresh_token,
                                 "user": {"name": user.name, "uid": user.uid, "gid": user.gid, "home": user.home}},
                                headers={"Cache-Control": "no-store"})
        secure = request.url.scheme == "https"
        response.set_cookie(ACCESS_COOKIE, access_token, max_age=ACCESS_TTL_S, path="/", httponly=True,
                            samesite="strict", secure=secure)
        response.set_cookie(REFRESH_COOKIE, refresh_token, max_age=REFRESH_TTL_S, path=REFRESH_COOKIE_PATH,
                            httponly=True, samesite="strict", secure=secure)
        return response
