"""Passwords of users and share links: argon2id through argon2-cffi (RFC 9106's parameters as
argon2-cffi's defaults set them), and the rules a new password and a user name must meet.

A hash is a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) that carries its own
parameters, so raising them later keeps old hashes verifiable (`needs_rehash` says when to
store a new one). Hashing costs ~50 ms and 64 MiB by design: callers on an event loop run it in
a thread.
"""

from __future__ import annotations

import functools
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # useradd's default NAME_REGEX, 32 characters at most
RESERVED_NAMES = frozenset({"root", "nobody"})

_hasher = PasswordHasher()


class PasswordRuleError(ValueError):
    """A password or a name that the rules refuse; the message says which rule."""


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordRuleError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordRuleError(f"a password has at most {MAX_PASSWORD_CHARS} characters")


def check_user_name(name: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise PasswordRuleError(f"user name {name!r}: 1-32 characters, lower-case letters, digits, '_' and '-', "
                                "not starting with a digit or '-'")
    if name in RESERVED_NAMES:
        raise PasswordRuleError(f"user name {name!r} is reserved")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """False for a wrong password and for a hash that is none (an empty one: no login)."""
    if not stored_hash:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_verify(password: str) -> None:
    """Costs what a real check costs, for a name that does not exist: the answer's timing does
    not tell which names are users."""
    verify_password(_dummy_hash(), password)


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("chunkfs-no-such-user")
