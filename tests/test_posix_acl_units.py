"""Unit tests of the ACL logic the metaserver applies (chunkfs/posix_acl.py); the
end-to-end comparison with ext4 is tests/test_acl.py."""

import errno

import pytest

from chunkfs.errors import FsError
from chunkfs import posix_acl as acl

U, NU, G, NG, M, O = acl.USER_OBJ, acl.USER, acl.GROUP_OBJ, acl.GROUP, acl.MASK, acl.OTHER  # noqa: E741 (O: the ACL's other)
X = acl.UNDEFINED_ID
DEFAULT = [(U, 7, X), (NU, 7, 1001), (G, 5, X), (NG, 6, 2001), (M, 7, X), (O, 0, X)]


def test_encode_parse_round_trip_in_the_kernels_order():
    shuffled = [DEFAULT[i] for i in (5, 3, 0, 4, 1, 2)]
    raw = acl.encode(shuffled)
    assert raw[:4] == b"\x02\x00\x00\x00" and len(raw) == 4 + 8 * 6
    assert acl.parse(raw) == DEFAULT


@pytest.mark.parametrize("raw, err", [
    (b"\x02\x00\x00", errno.EINVAL),
    (b"\x01\x00\x00\x00", errno.EOPNOTSUPP),
    (acl.encode([(U, 7, X), (G, 5, X)]), errno.EINVAL),  # no other entry
    (acl.encode([(U, 7, X), (NU, 7, 5), (G, 5, X), (O, 0, X)]), errno.EINVAL),  # named entry, no mask
])
def test_malformed_acls_are_refused(raw, err):
    with pytest.raises(FsError) as failure:
        acl.parse(raw)
    assert failure.value.errno == err


def test_mode_bits_take_the_mask_for_the_group_class():
    assert acl.permission_bits(DEFAULT) == 0o770
    assert acl.permission_bits([(U, 6, X), (G, 4, X), (O, 4, X)]) == 0o644
    assert acl.is_minimal([(U, 6, X), (G, 4, X), (O, 4, X)]) and not acl.is_minimal(DEFAULT)


def test_chmod_rewrites_owner_mask_and_other_but_not_named_entries():
    assert acl.with_mode(DEFAULT, 0o640) == [(U, 6, X), (NU, 7, 1001), (G, 5, X), (NG, 6, 2001), (M, 4, X), (O, 0, X)]
    assert acl.with_mode([(U, 7, X), (G, 7, X), (O, 7, X)], 0o751) == [(U, 7, X), (G, 5, X), (O, 1, X)]


def test_inheritance_cuts_the_acl_to_the_mode_asked_for_and_the_mode_to_the_acl():
    access, mode = acl.inherit(DEFAULT, 0o100666)
    assert mode == 0o100660
    assert access == [(U, 6, X), (NU, 7, 1001), (G, 5, X), (NG, 6, 2001), (M, 6, X), (O, 0, X)]
    access, mode = acl.inherit([(U, 7, X), (G, 5, X), (O, 5, X)], 0o040777)
    assert mode == 0o040755 and acl.is_minimal(access)


def test_only_directories_take_a_default_acl():
    with pytest.raises(FsError) as failure:
        acl.check_target(acl.DEFAULT, 0o100644)
    assert failure.value.errno == errno.EACCES
    acl.check_target(acl.DEFAULT, 0o040755)
    acl.check_target(acl.ACCESS, 0o100644)
