"""Who a REST request comes from: an access key, or a logged-in user's token.

Three ways in, tried in this order:
- `Authorization: Bearer ID:SECRET` or basic auth `ID:SECRET`: an access key (keys.py);
- `Authorization: Bearer JWT`: an access token from `POST /api/v1/auth/login` (tokens.py);
- the `chunkfs_access` cookie the login sets for the web page. A request that changes anything
  with the cookie must also carry `X-CSRF-Token` (the token `GET /api/v1/auth/me` gives, bound
  to the session): a cross-site form or script cannot read it, so it cannot forge a change even
  where a browser sends the cookie along (SameSite=Strict already stops most browsers).

A token names a session at the metaserver; a logged-out or ended session (logout, user disabled
or removed) is refused here within SESSION_CHECK_S, at once on the gateway that logged it out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

import trio
from starlette.requests import Request

from chunkfs.errors import FsError, TransportError
from chunkfs.gateway.access import Access
from chunkfs.gateway.rest_errors import RestError
from chunkfs.gateway.tokens import TokenError, TokenIssuer
from chunkfs.protocol.accounts import AccountsClient

ACCESS_COOKIE, REFRESH_COOKIE = "chunkfs_access", "chunkfs_refresh"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_CHECK_S = 10.0


@dataclass(frozen=True)
class Caller:
    """Whom a request acts as: the namespace checks every call against uid, gid and groups."""

    name: str  # the user's (or the access key's) name
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    session_id: str = ""  # "" for an access key
    via_cookie: bool = False

    @property
    def is_admin(self) -> bool:
        return self.uid == 0


def caller_in(request: Request) -> Caller:
    """The caller the REST door's route wrapper found for this request."""
    caller: Caller = request.state.caller
    return caller


class SessionCheck:
    """Whether a session still stands, asked of the metaserver at most every SESSION_CHECK_S."""

    def __init__(self, accounts: AccountsClient) -> None:
        self.accounts = accounts
        self._checked: dict[str, tuple[bool, float]] = {}  # session id -> (stands, when asked)

    async def stands(self, session_id: str) -> bool:
        known = self._checked.get(session_id)
        now = trio.current_time()
        if known is not None and now - known[1] < SESSION_CHECK_S:
            return known[0]
        try:
            await self.accounts.session(session_id)
            stands = True
        except FsError:
            stands = False
        if len(self._checked) > 100_000:
            self._checked.clear()
        self._checked[session_id] = (stands, now)
        return stands

    def ended(self, session_id: str) -> None:
        self._checked[session_id] = (False, trio.current_time())


class Authenticator:
    def __init__(self, access: Access, tokens: TokenIssuer, sessions: SessionCheck) -> None:
        self.access, self.tokens, self.sessions = access, tokens, sessions

    async def caller_of(self, request: Request) -> Caller:
        """The caller, or RestError 401 (no or bad credentials) / 403 (a change without CSRF token)."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            return self._key_caller(basic_credentials(credentials))
        if scheme.lower() == "bearer":
            if ":" in credentials:
                return self._key_caller(credentials)
            return await self._token_caller(credentials, via_cookie=False)
        if scheme:
            raise RestError(401, "Unauthorized", f"unknown authorization scheme {scheme!r}")
        cookie = request.cookies.get(ACCESS_COOKIE)
        if cookie is None:
            raise RestError(401, "Unauthorized", "log in (POST /api/v1/auth/login) or give an access key: "
                                                 "Authorization: Bearer ID:SECRET")
        caller = await self._token_caller(cookie, via_cookie=True)
        if request.method not in SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given, self.tokens.csrf_token(caller.session_id)):
                raise RestError(403, "CsrfTokenMissing", f"a change made with the login cookie needs the "
                                                         f"{CSRF_HEADER} header (GET /api/v1/auth/me gives it)")
        return caller

    def _key_caller(self, credentials: str) -> Caller:
        access_key_id, _, secret = credentials.partition(":")
        key = self.access.key_for_token(access_key_id, secret)
        if key is None:
            raise RestError(401, "Unauthorized", "unknown access key or wrong secret")
        return Caller(key.name, key.uid, key.gid)

    async def _token_caller(self, token: str, via_cookie: bool) -> Caller:
        try:
            claims = self.tokens.verify_access(token)
        except TokenError as exc:
            raise RestError(401, "InvalidToken", str(exc)) from None
        try:
            stands = await self.sessions.stands(claims.session_id)
        except TransportError:
            raise RestError(503, "Unavailable", "the metaserver does not answer") from None
        if not stands:
            raise RestError(401, "InvalidToken", "the session has ended (logged out, or the user was disabled)")
        return Caller(claims.name, claims.uid, claims.gid, claims.groups, claims.session_id, via_cookie)


def basic_credentials(credentials: str) -> str:
    try:
        return base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
