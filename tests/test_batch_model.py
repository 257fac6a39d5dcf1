"""A write-behind batch on the metaserver's side (GroupCommitter.run_together): however its
changes go (some failing), it leaves the namespace exactly as the same changes made one call at
a time, and it costs one commit. A hypothesis test against that model."""

from __future__ import annotations

import asyncio
import errno
import stat

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs import ROOT_INODE
from chunkfs.errors import FsError
from chunkfs.metaserver.app import decode_batch_op
from chunkfs.metaserver.db import GroupCommitter, MetaDB, u64
from chunkfs.metaserver.namespace import Namespace
from chunkfs.protocol import records as r


class Store:
    def __init__(self, path) -> None:
        self.db = MetaDB(path)
        self.committer = GroupCommitter(self.db)
        self.namespace = Namespace(self.db, 2)
        with self.db.env.begin(write=True) as txn:
            self.namespace.init_root(txn)

    def close(self) -> None:
        self.committer.stop()
        self.db.close()

    def tree(self) -> dict[bytes, tuple[int, int]]:
        """Every name under the root, one level deep: (mode, size)."""
        with self.db.read() as txn:
            return {name: ((a := self.namespace.getattr(txn, ino)).mode, a.size)
                    for name, ino in self.namespace.entries(txn, ROOT_INODE, None)}


def put(txn, db: MetaDB, n: int) -> int:
    txn.put(u64(10_000 + n), b"x", db=db.counters)
    return n


def refused(txn, db: MetaDB) -> None:
    txn.put(u64(99_999), b"never", db=db.counters)
    raise FsError(errno.EEXIST, "rolled back alone")



def test_a_small_batch_commits_on_the_event_loop_and_a_failure_still_rolls_back_alone(tmp_path):
    """A batch of a few mutations (the gateway's small PUT: its commit and its rename) is
    committed like a lone mutation, on the event loop when nothing else is being committed."""
    store = Store(tmp_path / "db")
    try:
        async def session():
            before, on_loop = store.committer.commits, store.committer.commits_on_loop
            outcomes = await store.committer.run_together([(put, (store.db, 1)), (refused, (store.db,))])
            assert (store.committer.commits, store.committer.commits_on_loop) == (before + 1, on_loop + 1)
            return outcomes

        (value, error), (_, failure) = asyncio.run(session())
        assert (value, error) == (1, None)
        assert isinstance(failure, FsError) and failure.errno == errno.EEXIST
        with store.db.read() as txn:
            assert txn.get(u64(99_999), db=store.db.counters) is None
            assert txn.get(u64(10_001), db=store.db.counters) == b"x"
    finally:
        store.close()

def test_a_batch_is_one_commit_whatever_its_size_and_a_failure_rolls_back_alone(tmp_path):
    store = Store(tmp_path / "db")
    try:
        calls = [(put, (store.db, n)) for n in range(700)]  # past the committer's MAX_BATCH
        calls.insert(350, (refused, (store.db,)))

        async def session():
            before = store.committer.commits
            outcomes = await store.committer.run_together(calls)
            assert store.committer.commits == before + 1
            return outcomes

        outcomes = asyncio.run(session())
        assert [value for value, error in outcomes if error is None] == list(range(700))
        assert isinstance(outcomes[350][1], FsError) and outcomes[350][1].errno == errno.EEXIST
        with store.db.read() as txn:
            assert txn.get(u64(99_999), db=store.db.counters) is None
            assert txn.get(u64(10_699), db=store.db.counters) == b"x"
    finally:
        store.close()


NAMES = st.sampled_from([b"a", b"b", b"c", b"d"])
CHANGES = st.lists(st.one_of(
    st.tuples(st.just("create"), NAMES, st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755])),
    st.tuples(st.just("remove"), NAMES, st.booleans()),
    st.tuples(st.just("rename"), NAMES, NAMES),
    st.tuples(st.just("setattr"), NAMES, st.sampled_from([0o600, 0o711])),
), max_size=20)


def as_call(ns: Namespace, change: tuple) -> tuple:
    op, name, arg = change
    if op == "create":
        return ns.create, (r.CreateReq(parent=ROOT_INODE, name=name, mode=arg, uid=0, gid=0),)
    if op == "remove":
        return ns.remove, (r.RemoveReq(ROOT_INODE, name, arg),)
    if op == "rename":
        return ns.rename, (r.RenameReq(ROOT_INODE, name, ROOT_INODE, arg),)

    def chmod(txn, name: bytes, mode: int) -> r.Attr:
        ino = ns.child(txn, ROOT_INODE, name)
        if ino is None:
            raise FsError(errno.ENOENT, "no such name")
        return ns.setattr(txn, r.SetattrReq(ino=ino, mode=mode), lambda *_: 0)

    return chmod, (name, arg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=CHANGES)
def test_a_batch_leaves_what_the_same_calls_one_at_a_time_leave(tmp_path_factory, changes):
    one_by_one, batched = (Store(tmp_path_factory.mktemp(kind)) for kind in ("single", "batch"))
    try:
        async def session():
            singles = []
            for change in changes:
                fn, args = as_call(one_by_one.namespace, change)
                try:
                    await one_by_one.committer.run_small(fn, *args)
                    singles.append(0)
                except FsError as exc:
                    singles.append(exc.errno)
            outcomes = await batched.committer.run_together([as_call(batched.namespace, change) for change in changes])
            return singles, [error.errno if isinstance(error, FsError) else 0 for _value, error in outcomes]

        singles, together = asyncio.run(session())
        assert together == singles, changes
        assert batched.tree() == one_by_one.tree(), changes
    finally:
        one_by_one.close()
        batched.close()


@pytest.mark.parametrize("op", ["reserve_inodes", "goal", "no_such_op"])
def test_a_batch_takes_only_the_changes_a_client_answers_itself(op):
    with pytest.raises(FsError) as refusal:
        decode_batch_op(r.BatchOp(op, msgspec.Raw(b"{}")))
    assert refusal.value.errno == errno.EINVAL
