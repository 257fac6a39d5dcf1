"""A metaserver restart under a mount that is copying files: the copy pauses for the restart
(plus at most the client's back-off ceiling) and goes on without an error."""

from __future__ import annotations

import itertools
import signal
import threading
import time
import urllib.request

import pytest

from conftest import chunkfs, wait_until


def healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


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
        wait_until(lambda: healthy(c.metaserver), 60, "the metaserver back")
        restart_s = time.monotonic() - killed
        count = len(done)
        wait_until(lambda: len(done) >= count + 20 or errors, 60, "the copy going on")
    finally:
        stop.set()
        writer.join(120)
    assert not errors, errors
    pause_s = max(b - a for a, b in itertools.pairwise(done))
    print(f"longest pause {pause_s:.2f} s, restart {restart_s:.2f} s")
    assert pause_s <= restart_s + 2.0, (pause_s, restart_s)
