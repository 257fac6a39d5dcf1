"""The group committer on its own: a lone small mutation is committed on the event loop, ones
that arrive together share a commit in the writer thread, and either way a failed mutation rolls
back alone and an answer means the change is committed."""

from __future__ import annotations

import asyncio
import errno

import pytest

from chunkfs.errors import FsError
from chunkfs.metaserver.db import GroupCommitter, MetaDB, u64
from chunkfs.metaserver.replication_log import Follower, ReplicationLog


@pytest.fixture
def committer(tmp_path):
    db = MetaDB(tmp_path / "meta")
    with db.env.begin(write=True) as txn:
        ReplicationLog.new_history(txn, db)
    committer = GroupCommitter(db, ReplicationLog(db, timeout_s=0.3))
    yield committer
    committer.stop()
    db.close()


def put(txn, committer: GroupCommitter, n: int) -> int:
    txn.put(u64(n), b"inode %d" % n, db=committer.db.inodes)
    return n


def fails(txn, committer: GroupCommitter) -> None:
    txn.put(u64(999), b"never", db=committer.db.inodes)
    raise FsError(errno.EEXIST, "rolled back alone")


def stored(committer: GroupCommitter) -> list[int]:
    with committer.db.read() as txn:
        return [int.from_bytes(k, "big") for k, _v in txn.cursor(db=committer.db.inodes)]


def test_lone_mutations_commit_on_the_loop_and_concurrent_ones_share_a_commit(committer):
    async def session():
        for n in range(5):
            assert await committer.run_small(put, committer, n) == n
        assert committer.commits_on_loop == 5
        assert stored(committer) == list(range(5))  # answered means committed
        before = committer.commits
        results = await asyncio.gather(*[committer.run_small(put, committer, n) for n in range(5, 25)],
                                       committer.run_small(fails, committer), return_exceptions=True)
        assert results[:20] == list(range(5, 25)) and isinstance(results[20], FsError)
        assert committer.commits == before + 1 and committer.commits_on_loop == 5
        with pytest.raises(FsError) as alone:
            await committer.run_small(fails, committer)
        assert alone.value.errno == errno.EEXIST
        assert await committer.run(put, committer, 25) == 25

    asyncio.run(session())
    assert stored(committer) == list(range(26))
    assert committer.write_log.seq == 5 + 1 + 1  # a failed lone mutation wrote no batch


def test_with_a_synchronous_standby_commits_stay_off_the_loop(committer):
    committer.write_log.followers["s1"] = Follower("s1", synchronous=True)

    async def session():
        await committer.run_small(put, committer, 1)

    asyncio.run(session())
    assert committer.commits_on_loop == 0 and stored(committer) == [1]
