"""A metaserver restart under a mount that is copying files: the copy pauses for the restart
and goes on without an error. How long the pause is (the restart plus at most the client's
back-off ceiling) is a figure of bench/restart_pause.py, not an assert here; what makes it short
is counted below: after a restart the client tries one stale connection, then a new one."""

from __future__ import annotations

import itertools
import signal
import threading
import time

import h11
import pytest
import trio

from chunkfs.daemons import answers_health
from chunkfs.protocol.http import SignedHttp
from conftest import chunkfs, free_port_block, wait_until


@pytest.mark.parametrize("fresh_cluster", [{"mount_options": "retry_s=120"}], indirect=True)
def test_a_copy_pauses_for_a_metaserver_restart_and_goes_on(fresh_cluster):
    c = fresh_cluster
    (c.mnt / "copy").mkdir()
    done: list[float] = []  # when each file was written and closed
    errors: list[BaseException] = []
    stop = threading.Event()

    def copy() -> None:
        i = 0
        while not stop.is_set():
            try:
                (c.mnt / "copy" / f"f{i}").write_bytes(b"x" * 5000)
                (c.mnt / f"top{i}").write_bytes(b"y")  # a directory made at mount time: a call each
            except OSError as exc:
                errors.append(exc)
                return
            done.append(time.monotonic())
            i += 1

    writer = threading.Thread(target=copy)
    writer.start()
    try:
        wait_until(lambda: len(done) >= 20, 60, "the copy under way")
        killed = time.monotonic()
        c.kill("metaserver", signal.SIGTERM)
        chunkfs("up", "--dir", c.dir, "--mount", c.mnt, "--port", c.port, "-o", c.mount_options)
        wait_until(lambda: answers_health(f"http://{c.metaserver}/health"), 60, "the metaserver back")
        restart_s = time.monotonic() - killed
        count = len(done)
        wait_until(lambda: len(done) >= count + 20 or errors, 60, "the copy going on")
    finally:
        stop.set()
        writer.join(120)
    assert not errors, errors
    pause_s = max(b - a for a, b in itertools.pairwise(done))
    print(f"longest pause {pause_s:.2f} s, restart {restart_s:.2f} s")  # a figure (bench/restart_pause.py)


async def serve_ok(port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A keep-alive HTTP server answering every request 200 `{}`."""

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                                      + conn.send(h11.Data(data=b"{}")) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    await trio.serve_tcp(handle, port, host="127.0.0.1", task_status=task_status)


def test_after_a_restart_one_stale_connection_is_tried_then_a_new_one():
    """The client holds 8 idle connections to a server that restarts: the next call fails on one
    of them and succeeds on a new connection at its second attempt, not its ninth."""
    port = free_port_block(1)

    async def run() -> int:
        http = SignedHttp(b"s" * 32, trio_native=True, retry_s=10)
        attempts = 0
        send = http.transport.send

        async def counted(*args):
            nonlocal attempts
            attempts += 1
            return await send(*args)

        http.transport.send = counted  # type: ignore[method-assign]
        url = f"http://127.0.0.1:{port}/v1/x"
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()
            first_gone = trio.Event()

            async def first_server(task_status=trio.TASK_STATUS_IGNORED):
                try:
                    with first:
                        await serve_ok(port, task_status=task_status)
                finally:
                    first_gone.set()  # its listener and every connection it served are closed

            await nursery.start(first_server)
            async with trio.open_nursery() as callers:  # 8 at once: 8 connections pooled
                for _ in range(8):
                    callers.start_soon(http.request, "GET", url)
            first.cancel()  # the server goes, and its connections with it
            await first_gone.wait()
            await nursery.start(serve_ok, port)
            attempts = 0
            await http.request("GET", url)
            nursery.cancel_scope.cancel()
        await http.aclose()
        return attempts

    assert trio.run(run) == 2
