"""A stopping metaserver ends its clients' long polls at once: the graceful stop would otherwise
wait them out (up to its time-out), and every client's pause at a restart with it."""

from __future__ import annotations

import asyncio

from chunkfs.metaserver.changes import ChangeFeed


def test_closing_the_change_feed_answers_the_long_polls_waiting_on_it():
    async def scenario() -> None:
        feed = ChangeFeed()
        polls = [asyncio.create_task(feed.since(0, 30, f"client{i}")) for i in range(3)]
        await asyncio.sleep(0)
        assert not any(p.done() for p in polls)  # nothing to say: they wait
        feed.close()
        done, _waiting = await asyncio.wait(polls, timeout=10)
        assert len(done) == 3
        assert all(p.result().changes == [] and not p.result().reset for p in polls)
        assert (await feed.since(0, 30, "late")).changes == []  # a poll arriving during the stop: answered too

    asyncio.run(scenario())
