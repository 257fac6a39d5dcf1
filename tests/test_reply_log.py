"""The reply log's look-up: skipped only for a client's first attempt under an id of its own."""

from __future__ import annotations

from chunkfs.metaserver.db import MetaDB
from chunkfs.metaserver.replies import KEEP_S, ReplyLog


def test_a_first_attempt_is_stored_without_a_look_up_and_its_retry_is_answered(tmp_path):
    now = [1_000_000.0]
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    replies = ReplyLog(db, clock=lambda: now[0])
    runs = []

    def mutate(txn, req):
        runs.append(req)
        return {"made": req}

    with db.env.begin(write=True) as txn:
        assert replies.once(mutate, "client", "rid", first_attempt=True)(txn, 1) == (b'{"made":1}', {"made": 1})
        now[0] += KEEP_S - 60
        assert replies.once(mutate, "client", "rid")(txn, 1) == (b'{"made":1}', None)  # the retry: answered
        assert replies.once(mutate, "client", "rid2", first_attempt=True)(txn, 2)[1] == {"made": 2}
    assert runs == [1, 2]
    db.close()
