"""The pieces of users and share links that need no cluster: password rules and hashes, tokens,
the login throttle's schedule, share ids, durations on the command line."""

from __future__ import annotations

import click
import pytest

from chunkfs.cli.share_cmd import parse_duration
from chunkfs.gateway.login_throttle import FREE_FAILURES, LoginThrottle
from chunkfs.gateway.tokens import TokenError, TokenIssuer
from chunkfs.passwords import PasswordRuleError, check_new_password, check_user_name, hash_password, verify_password
from chunkfs.protocol.accounts import User, new_share_token, share_id

SECRET = b"0123456789abcdef0123456789abcdef"


def test_password_rules_and_argon2id_hashes():
    with pytest.raises(PasswordRuleError, match="at least 8"):
        check_new_password("seven77")
    check_new_password("eight888")
    for bad in ("", "Alice", "1abc", "-x", "a" * 33, "a b", "root"):
        with pytest.raises(PasswordRuleError):
            check_user_name(bad)
    check_user_name("alice_b-2")
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "wrong horse")
    assert not verify_password("", "anything")  # no hash: no login
    assert not verify_password("not a hash", "anything")


def test_access_tokens_expire_and_belong_to_one_cluster():
    issuer = TokenIssuer(SECRET)
    user = User(name="alice", uid=1000, gid=1000, groups=[50], home="/home/alice")
    token, _ = issuer.access_token(user, "a" * 32)
    claims = issuer.verify_access(token)
    assert (claims.name, claims.uid, claims.gid, claims.groups, claims.session_id) == ("alice", 1000, 1000, (50,), "a" * 32)
    expired, _ = issuer.access_token(user, "a" * 32, ttl_s=-1)
    with pytest.raises(TokenError, match="expired"):
        issuer.verify_access(expired)
    with pytest.raises(TokenError):
        TokenIssuer(b"another secret of this length!!!").verify_access(token)
    with pytest.raises(TokenError):
        issuer.verify_access(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    share_pass = issuer.share_pass("b" * 32, 60)
    with pytest.raises(TokenError, match="access token"):
        issuer.verify_access(share_pass)  # a share link's pass is no login
    assert issuer.share_pass_holds(share_pass, "b" * 32) and not issuer.share_pass_holds(share_pass, "c" * 32)
    assert issuer.csrf_token("a" * 32) != issuer.csrf_token("b" * 32)
    refresh = issuer.new_refresh_token("d" * 32)
    assert issuer.session_of_refresh(refresh) == "d" * 32
    with pytest.raises(TokenError):
        issuer.session_of_refresh("../../etc.passwd")


def test_failed_logins_wait_longer_each_time():
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(FREE_FAILURES):
        assert throttle.wait_s("alice", "10.0.0.1") == 0
        throttle.failed("alice", "10.0.0.1")
    assert throttle.wait_s("alice", "10.0.0.2") == 1.0  # the name is slowed from any address
    assert throttle.wait_s("bob", "10.0.0.1") == 0  # the address not yet (it has more free tries)
    now[0] += 1.0
    assert throttle.wait_s("alice", "10.0.0.1") == 0
    throttle.failed("alice", "10.0.0.1")
    assert throttle.wait_s("alice", "10.0.0.1") == 2.0  # doubled
    throttle.succeeded("alice")
    assert throttle.wait_s("alice", "10.0.0.3") == 0
    now[0] += 3600
    assert throttle.wait_s("alice", "10.0.0.1") == 0  # failures older than the window are forgiven


def test_share_ids_are_hashes_of_tokens():
    token, link_id = new_share_token()
    assert len(token) >= 43 and share_id(token) == link_id and len(link_id) == 32
    assert new_share_token()[0] != token


def test_durations():
    assert [parse_duration(d) for d in ("90", "90s", "10m", "12h", "7d", "2w")] == [90, 90, 600, 43200, 604800, 1209600]
    with pytest.raises(click.BadParameter):
        parse_duration("soon")
