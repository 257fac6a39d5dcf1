"""Units on what the servers accept (chunkfs/protocol/limits.py, the request records'
constraints, chunkfs/request_checks.py) and on what keeps one bad value from spreading: the change
feed's encoding, the ownership of chunk versions, the id counters, the mount's attribute check."""

from __future__ import annotations

import asyncio
import errno
import stat
from collections import deque

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from chunkfs.errors import FsError
from chunkfs.metaserver.chunk_table import MAX_SKIP, IdAllocator
from chunkfs.metaserver.changes import ChangeFeed
from chunkfs.metaserver.db import MetaDB, u64
from chunkfs.metaserver.reservations import VersionReservations
from chunkfs.protocol import limits
from chunkfs.protocol import records as r
from chunkfs.request_checks import parse_int


def decode_errno(record_type, fields: dict) -> int | None:
    """The errno a server answers for this request body (None: accepted)."""
    try:
        msgspec.json.decode(msgspec.json.encode(fields), type=record_type)
    except FsError as exc:
        return exc.errno
    except msgspec.ValidationError:
        return errno.EINVAL  # what chunkfs.httpserver.read_body answers for it
    return None


CREATE = {"parent": 1, "name": b"name", "mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0}


@pytest.mark.parametrize("record_type, fields, expected", [
    (r.InodeReq, {"ino": 1}, None),
    (r.InodeReq, {"ino": 0}, errno.EINVAL),
    (r.InodeReq, {"ino": 2**63}, errno.EINVAL),
    (r.SetattrReq, {"ino": 5, "size": limits.MAX_FILE_SIZE}, None),
    (r.SetattrReq, {"ino": 5, "size": limits.MAX_FILE_SIZE + 1}, errno.EFBIG),
    (r.SetattrReq, {"ino": 5, "size": -1}, errno.EINVAL),
    (r.SetattrReq, {"ino": 5, "uid": 2**32 - 1, "gid": 0}, None),
    (r.SetattrReq, {"ino": 5, "uid": 2**32}, errno.EINVAL),
    (r.SetattrReq, {"ino": 5, "mode": stat.S_IFREG | 0o4755}, None),  # chmod may carry the type
    (r.SetattrReq, {"ino": 5, "mode": 0o1000000}, errno.EINVAL),
    (r.SetattrReq, {"ino": 5, "atime_ns": -(2**63)}, None),
    (r.CreateReq, CREATE, None),
    (r.CreateReq, {**CREATE, "name": b"\xe9t\xe9"}, None),  # names need not be UTF-8
    (r.CreateReq, {**CREATE, "name": b"x" * 255}, None),
    (r.CreateReq, {**CREATE, "name": b"x" * 256}, errno.ENAMETOOLONG),
    (r.CreateReq, {**CREATE, "name": b"."}, errno.EINVAL),
    (r.CreateReq, {**CREATE, "name": b""}, errno.EINVAL),
    (r.CreateReq, {**CREATE, "mode": 0o644}, errno.EINVAL),  # no file type
    (r.CreateReq, {**CREATE, "mode": stat.S_IFLNK | 0o777, "target": b"t" * 4095}, None),
    (r.CreateReq, {**CREATE, "mode": stat.S_IFLNK | 0o777, "target": b"t" * 4096}, errno.ENAMETOOLONG),
    (r.CreateReq, {**CREATE, "ino": 0}, None),
    (r.CreateReq, {**CREATE, "ino": -3}, errno.EINVAL),
    (r.XattrReq, {"ino": 5, "name": b"user.x", "value": b"v" * 65536}, None),
    (r.XattrReq, {"ino": 5, "name": b"user.x", "value": b"v" * 65537}, errno.E2BIG),
    (r.XattrReq, {"ino": 5, "name": b"n" * 256}, errno.ERANGE),
    (r.RemoveReq, {"parent": 1, "name": b"x", "is_dir": False, "open_by": "mount-1"}, None),
    (r.RemoveReq, {"parent": 1, "name": b"x", "is_dir": False, "open_by": "m\u00e9"}, errno.EINVAL),
    (r.ReaddirReq, {"ino": 1, "after": b"any\0stored name"}, None),  # a listing goes on after any name
    (r.CorruptReport, {"server_id": "cs", "chunks": [[2**64 - 1, 1]]}, errno.EINVAL),
    (r.ServerHello, {"id": "cs", "address": "h:1", "capacity_bytes": 1, "used_bytes": 0,
                     "chunks": [[2**64 - 1, 1]]}, None),  # left out by the metaserver, not refused
    (r.GcReq, {"min_age_s": float("nan")}, errno.EINVAL),
])
def test_request_records_refuse_what_is_out_of_range(record_type, fields, expected):
    assert decode_errno(record_type, fields) == expected


ids = st.integers(1, limits.MAX_ID)
names = st.binary(min_size=1, max_size=255).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
chunk_refs = st.builds(r.ChunkRef, index=st.integers(0, limits.MAX_CHUNK_INDEX), chunk_id=ids, version=ids,
                       length=st.integers(0, 4 << 20), checksum=st.text("0123456789abcdef", max_size=16),
                       replicas=st.lists(st.from_regex(limits.TOKEN, fullmatch=True), max_size=3))
setattrs = st.builds(r.SetattrReq, ino=ids, mode=st.none() | st.integers(0, 0o7777),
                     uid=st.none() | st.integers(0, limits.MAX_UID), gid=st.none() | st.integers(0, limits.MAX_UID),
                     size=st.none() | st.integers(0, limits.MAX_FILE_SIZE),
                     mtime_ns=st.none() | st.integers(limits.MIN_TIME_NS, limits.MAX_TIME_NS))
commits = st.builds(r.CommitReq, ino=ids, size=st.integers(0, limits.MAX_FILE_SIZE),
                    mtime_ns=st.integers(limits.MIN_TIME_NS, limits.MAX_TIME_NS), chunks=st.lists(chunk_refs, max_size=3),
                    discard=st.lists(chunk_refs, max_size=2), attrs=st.none() | setattrs)
renames = st.builds(r.RenameReq, old_parent=ids, old_name=names, new_parent=ids, new_name=names)


@settings(max_examples=200, deadline=None)
@given(st.one_of(commits, setattrs, renames))
def test_valid_requests_round_trip(request):
    assert msgspec.json.decode(msgspec.json.encode(request), type=type(request)) == request


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["ino", "chunk_id", "version", "size", "uid"]),
       value=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.integers(2**32, 2**62)))
def test_out_of_range_numbers_are_refused(field, value):
    chunk = {"index": 0, "chunk_id": 7, "version": 9, "length": 1, "checksum": "0", "replicas": ["cs1"]}
    request = {"ino": 5, "size": 10, "mtime_ns": 0, "chunks": [chunk], "attrs": {"ino": 5}}
    if field in ("chunk_id", "version"):
        chunk[field] = value
    elif field == "uid":
        request["attrs"]["uid"] = value
    else:
        request[field] = value
    fits = {"ino": limits.MAX_ID, "chunk_id": limits.MAX_ID, "version": limits.MAX_ID,
            "size": limits.MAX_FILE_SIZE, "uid": limits.MAX_UID}[field]
    expected = None if 0 < value <= fits else errno.EFBIG if field == "size" and value > 0 else errno.EINVAL
    assert decode_errno(r.CommitReq, request) == expected


def test_parse_int_takes_only_short_decimal_numbers_in_range():
    assert parse_int("42", "x", 1, 100) == 42
    for text in ("9" * 400, "-1", "0x10", "", " 1", "1e3", "١٢"):  # the last: Arabic-Indic digits
        with pytest.raises(FsError) as info:
            parse_int(text, "x", 1, 2**63 - 1)
        assert info.value.errno == errno.EINVAL


def test_the_change_feed_leaves_out_a_change_it_cannot_encode(caplog):
    feed = ChangeFeed()
    feed.publish("\udce9", [1], [])  # blanked: not a token
    feed.publish("ok", [2], [(1, "\udce9")])  # type: ignore[list-item]  # cannot be encoded: logged, a gap
    feed.publish("ok", [3], [(1, b"n")])
    for _ in range(2):
        decoded = msgspec.json.decode(feed.encode_batch(asyncio.run(feed.since(0, 0, "other"))), type=r.ChangeBatch)
        assert [c.seq for c in decoded.changes] == [1, 3] and decoded.seq == 3
        assert decoded.changes[0].origin == ""
    assert sum("change 2 cannot be sent" in m for m in caplog.messages) == 1


@pytest.fixture
def db(tmp_path):
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    yield db
    db.close()


def test_versions_are_committed_only_by_the_client_that_reserved_them(db):
    owners = VersionReservations(db, lifetime_s=3600)
    with db.env.begin(write=True) as txn:
        owners.grant(txn, "a", 100, 10)
        owners.grant(txn, "a", 110, 10)  # merged with the block before
        owners.grant(txn, "b", 120, 5)
        assert owners.ranges(txn) == [(100, 120), (120, 125)]
        assert owners.claim(txn, "a", 119, ino=7) is True
        assert owners.claim(txn, "a", 119, ino=7) is False  # a retry, same file
        for client, version, ino in (("a", 119, 8), ("a", 120, 7), ("b", 100, 7), ("a", 99, 7), ("a", 125, 7)):
            with pytest.raises(FsError) as info:
                owners.claim(txn, client, version, ino)
            assert info.value.errno == errno.EPERM
        assert not owners.holds(owners.ranges(txn), 125) and owners.holds(owners.ranges(txn), 124)
        assert owners.ended(txn, now=0, session_over=lambda client: client == "b") == [120]
        owners.drop(txn, owners.ended(txn, now=float("inf"), session_over=lambda client: False))
        assert owners.ranges(txn) == [] and txn.get(b"s" + u64(119), db=db.reservations) is None
        with pytest.raises(FsError) as ended:
            owners.claim(txn, "a", 101, ino=7)  # its reservation ended
        assert ended.value.errno == errno.EPERM


def test_a_client_holds_a_bounded_number_of_reservations(db):
    owners = VersionReservations(db, lifetime_s=3600, max_blocks_per_client=2)
    with db.env.begin(write=True) as txn:
        for first in (10, 30, 50):  # not consecutive: three blocks
            owners.grant(txn, "a", first, 5)
        owners.grant(txn, "b", 70, 5)
        assert owners.ranges(txn) == [(30, 35), (50, 55), (70, 75)]
    assert VersionReservations(db, lifetime_s=3600)._blocks_of == {"a": deque([30, 50]), "b": deque([70])}


def test_id_counters_ignore_ids_far_past_those_handed_out(db, caplog):
    ids = IdAllocator(db, b"next_chunk_id")
    with db.env.begin(write=True) as txn:
        first = ids.take(txn)
        ids.skip_past(txn, [first + 5, limits.MAX_ID, 2**64 - 1, -1])
        assert ids.take(txn) == first + 6
        ids.skip_past(txn, [first + MAX_SKIP * 2])
        assert ids.take(txn) == first + 7
        txn.put(b"next_chunk_id", u64(2**64 - 1), db=db.counters)  # left there by an older version
        ids.repair(txn, lambda: 41)
        assert IdAllocator(db, b"next_chunk_id").take(txn) == 42
    assert sum("far past any handed out" in m for m in caplog.messages) == 1


def test_attributes_the_kernel_cannot_take_are_named():
    good = r.Attr(ino=5, mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=1, atime_ns=0, mtime_ns=0, ctime_ns=0, nlink=1)
    assert limits.unrepresentable(good) is None
    for change in ({"uid": 2**40}, {"size": -5}, {"mode": 0o170000}, {"mode": -1}, {"ino": 2**64},
                   {"mtime_ns": 2**63}):
        assert limits.unrepresentable(msgspec.structs.replace(good, **change)) is not None
