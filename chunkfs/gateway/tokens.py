"""Access tokens (JWT, HS256, through PyJWT), refresh tokens and CSRF tokens of logged-in users.

- An access token is short-lived (ACCESS_TTL_S) and carries the user's name, uid, gid, groups
  and session id, so a request needs no call to find who it acts as.
- A refresh token is `SESSION_ID.RANDOM`, good for REFRESH_TTL_S; the metaserver keeps only its
  SHA-256 in the session, and each refresh replaces it (a stolen, already used refresh token is
  worth nothing).
- The CSRF token is an HMAC of the session id: the web page sends it back in a header.

All three are keyed by one key derived from the cluster secret, so every gateway of a cluster
accepts the tokens any of them issued, and none is stored in a file.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt

from chunkfs.protocol.accounts import User

ACCESS_TTL_S = 15 * 60
REFRESH_TTL_S = 7 * 86400
ALGORITHM = "HS256"
ISSUER = "chunkfs-gateway"
DERIVATION_LABEL = b"chunkfs-gateway user tokens\0"


class TokenError(ValueError):
    """A token that is not one of ours, is damaged, or has expired (the message says which)."""


@dataclass(frozen=True)
class AccessClaims:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    session_id: str
    expires_at: float


def refresh_digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class TokenIssuer:
    def __init__(self, server_key: bytes) -> None:
        self._key = hmac.new(server_key, DERIVATION_LABEL, hashlib.sha256).digest()

    def access_token(self, user: User, session_id: str, ttl_s: float = ACCESS_TTL_S) -> tuple[str, float]:
        """The token and when it expires (seconds since the epoch)."""
        now = time.time()
        expires_at = now + ttl_s
        claims = {"iss": ISSUER, "sub": user.name, "uid": user.uid, "gid": user.gid, "groups": list(user.groups),
                  "sid": session_id, "iat": int(now), "exp": int(expires_at), "typ": "access"}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), expires_at

    def verify_access(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "sid", "uid", "gid"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("the access token has expired: refresh it (POST /api/v1/auth/refresh)") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"not a valid access token: {exc}") from None
        if claims.get("typ") != "access":
            raise TokenError("not an access token")
        try:
            return AccessClaims(str(claims["sub"]), int(claims["uid"]), int(claims["gid"]),
                                tuple(int(g) for g in claims.get("groups", [])), str(claims["sid"]),
                                float(claims["exp"]))
        except (TypeError, ValueError):
            raise TokenError("not a valid access token: a claim has the wrong type") from None

    @staticmethod
    def new_refresh_token(session_id: str) -> str:
        return f"{session_id}.{secrets.token_urlsafe(32)}"

    @staticmethod
    def session_of_refresh(refresh_token: str) -> str:
        session_id, _, _ = refresh_token.partition(".")
        if len(session_id) != 32 or not all(c in "0123456789abcdef" for c in session_id):
            raise TokenError("not a refresh token")
        return session_id

    def csrf_token(self, session_id: str) -> str:
        return hmac.new(self._key, b"csrf\0" + session_id.encode(), hashlib.sha256).hexdigest()[:40]

    def share_pass(self, share_id: str, ttl_s: float) -> str:
        """What a browser keeps (a cookie) after giving a share link's password: a token for this
        link only, good for `ttl_s`."""
        now = int(time.time())
        return jwt.encode({"iss": ISSUER, "typ": "share", "sub": share_id, "iat": now, "exp": now + int(ttl_s)},
                          self._key, algorithm=ALGORITHM)

    def share_pass_holds(self, token: str, share_id: str) -> bool:
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError:
            return False
        return claims.get("typ") == "share" and claims.get("sub") == share_id
