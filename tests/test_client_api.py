"""The in-process layer: the client core and its Python API against real daemons, no FUSE.

`chunkfs.client.connect` is used as a script would use it; the cluster's mount is there only to
check that the API and a mount see the same files (close-to-open) and the same attributes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import chunkfs.client
from chunkfs import CHUNK_SIZE, INLINE_MAX_BYTES
from conftest import chunkfs as chunkfs_command
from conftest import free_port_block, metaserver_calls, sigint_as_at_a_terminal, wait_until

MiB = 1 << 20


@pytest.fixture(scope="module")
def fs(cluster):
    with chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, retry_s=5) as filesystem:
        yield filesystem


@pytest.fixture
def home(fs, request):
    """A directory of the test's own in the cluster."""
    path = f"/{request.node.name[:60]}"
    fs.makedirs(path, exist_ok=True)
    return path


def test_a_file_written_and_read_back_in_every_mode(fs, home):
    with fs.open(f"{home}/f", "wb") as f:
        assert (f.writable(), f.readable(), f.seekable()) == (True, False, True)
        assert f.name == f"{home}/f" and not f.closed
        assert f.write(b"hello ") == 6 and f.write(bytearray(b"world")) == 5
        assert f.tell() == 11
    assert f.closed
    with fs.open(f"{home}/f", "rb") as f:
        assert f.read(5) == b"hello" and f.tell() == 5
        buffer = bytearray(3)
        assert f.readinto(buffer) == 3 and buffer == b" wo"
        assert f.readall() == b"rld" and f.read() == b""
        assert f.seek(-5, os.SEEK_END) == 6 and f.read() == b"world"
    with fs.open(f"{home}/f", "ab") as f:
        f.write(b"!")
    with fs.open(f"{home}/f", "r+b") as f:
        f.seek(0)
        f.write(b"J")
        f.truncate(8)
        f.flush()
        assert fs.stat(f"{home}/f").st_size == 8
    with fs.open(f"{home}/f", "rb") as f:
        assert f.read() == b"Jello wo"
    with pytest.raises(FileExistsError) as exc:
        fs.open(f"{home}/f", "xb")
    assert exc.value.errno == errno.EEXIST
    with fs.open(f"{home}/new", "xb") as f:
        f.write(b"x")
    with fs.open(f"{home}/lines", "wb") as f:
        f.write(b"one\ntwo\n" + b"x" * 100_000 + b"\nlast")
    with fs.open(f"{home}/lines") as f:
        assert f.readline() == b"one\n" and f.readline(2) == b"tw"
        assert list(f) == [b"o\n", b"x" * 100_000 + b"\n", b"last"]
    with fs.open(f"{home}/f", "w+b") as f:
        assert f.read() == b""
        f.write(b"0123456789" * 1000)
        f.seek(5)
        assert f.read(5) == b"56789"  # its own writes, before they are stored
    assert fs.stat(f"{home}/f").st_size == 10_000
    with pytest.raises(ValueError):
        fs.open(f"{home}/f", "r")  # text mode: binary only


def test_a_multi_chunk_file_with_a_rewrite_in_its_middle(fs, home):
    data = bytearray(os.urandom(9 * MiB + 123))
    with fs.open(f"{home}/big", "wb") as f:
        for start in range(0, len(data), MiB):
            f.write(data[start : start + MiB])
    with fs.open(f"{home}/big", "r+b") as f:
        f.seek(4 * MiB - 10)
        f.write(b"x" * 20)
    data[4 * MiB - 10 : 4 * MiB + 10] = b"x" * 20
    with fs.open(f"{home}/big", "rb") as f:
        assert f.read() == data


def test_writes_that_cover_whole_chunks_read_back_and_take_later_writes(fs, home):
    """A write covering a chunk whole is kept as written (bytes) or copied once (a buffer the
    caller goes on using): later writes into that chunk and reads before close see it all."""
    chunk = CHUNK_SIZE
    first, buffer = os.urandom(chunk), bytearray(os.urandom(chunk))
    expected = bytearray(first + buffer)
    with fs.open(f"{home}/f", "w+b") as f:
        f.write(first)
        f.write(buffer)
        buffer[:] = bytes(chunk)  # the caller reuses its buffer: what was written stays
        f.seek(10)
        f.write(b"patch")
        expected[10:15] = b"patch"
        f.seek(0)
        assert f.read() == expected
        span = os.urandom(2 * chunk + 100)  # chunks 3 and 4 whole, inside one unaligned write
        f.seek(3 * chunk - 50)
        f.write(memoryview(span))
        expected += bytes(chunk - 50) + span
        f.seek(3 * chunk + 7)
        f.write(b"again")
        expected[3 * chunk + 7 : 3 * chunk + 12] = b"again"
    with fs.open(f"{home}/f", "rb") as f:
        assert f.read() == expected


def test_the_namespace_calls(fs, home):
    fs.makedirs(f"{home}/a/b/c")
    fs.makedirs(f"{home}/a/b", exist_ok=True)
    with pytest.raises(FileExistsError) as exc:
        fs.makedirs(f"{home}/a/b")
    assert exc.value.errno == errno.EEXIST
    fs.mkdir(f"{home}/a/d", 0o700)
    assert stat.S_IMODE(fs.stat(f"{home}/a/d").st_mode) == 0o700
    with fs.open(f"{home}/a/file", "wb") as f:
        f.write(b"data")
    assert sorted(fs.listdir(f"{home}/a")) == ["b", "d", "file"]
    entries = {e.name: e for e in fs.scandir(f"{home}/a")}
    assert entries["b"].is_dir() and entries["file"].is_file() and not entries["file"].is_symlink()
    assert entries["file"].stat().st_size == 4 and entries["file"].path == f"{home}/a/file"
    assert list(fs.walk(f"{home}/a")) == [(f"{home}/a", ["b", "d"], ["file"]), (f"{home}/a/b", ["c"], []),
                                         (f"{home}/a/b/c", [], []), (f"{home}/a/d", [], [])]
    assert fs.exists(f"{home}/a/file") and not fs.exists(f"{home}/a/nothing") and not fs.exists(f"{home}/a/file/x")
    fs.symlink("file", f"{home}/a/link")
    assert fs.readlink(f"{home}/a/link") == "file"
    assert stat.S_ISLNK(fs.lstat(f"{home}/a/link").st_mode) and fs.stat(f"{home}/a/link").st_size == 4
    with fs.open(f"{home}/a/link") as f:
        assert f.read() == b"data"
    fs.rename(f"{home}/a/file", f"{home}/a/d/moved")
    assert fs.listdir(f"{home}/a/d") == ["moved"] and not fs.exists(f"{home}/a/file")
    fs.chmod(f"{home}/a/d/moved", 0o640)
    fs.chown(f"{home}/a/d/moved", 1234, 5678)
    fs.utime(f"{home}/a/d/moved", ns=(1_000_000_000, 2_000_000_000))
    st = fs.stat(f"{home}/a/d/moved")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == \
        (0o640, 1234, 5678, 1_000_000_000, 2_000_000_000)
    fs.utime(f"{home}/a/d/moved")
    assert fs.stat(f"{home}/a/d/moved").st_mtime_ns > 2_000_000_000
    fs.truncate(f"{home}/a/d/moved", 2)
    with fs.open(f"{home}/a/d/moved") as f:
        assert f.read() == b"da"
    with pytest.raises(OSError) as exc:
        fs.rmdir(f"{home}/a/d")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError) as exc:
        fs.remove(f"{home}/a/d")
    assert exc.value.errno == errno.EISDIR
    fs.remove(f"{home}/a/d/moved")
    fs.rmdir(f"{home}/a/d")
    with pytest.raises(NotADirectoryError) as exc:
        fs.rmdir(f"{home}/a/link")
    assert exc.value.errno == errno.ENOTDIR
    with pytest.raises(FileNotFoundError) as exc:
        fs.stat(f"{home}/a/d")
    assert exc.value.errno == errno.ENOENT and exc.value.filename == f"{home}/a/d"


def test_xattrs_goal_and_statvfs(cluster, fs, home):
    with fs.open(f"{home}/f", "wb") as f:
        f.write(b"x")
    fs.setxattr(f"{home}/f", "user.color", b"blue")
    assert fs.getxattr(f"{home}/f", "user.color") == b"blue"
    assert "user.color" in fs.listxattr(f"{home}/f")
    with pytest.raises(FileExistsError) as exc:
        fs.setxattr(f"{home}/f", "user.color", b"red", os.XATTR_CREATE)
    assert exc.value.errno == errno.EEXIST
    fs.removexattr(f"{home}/f", "user.color")
    with pytest.raises(OSError) as exc:
        fs.getxattr(f"{home}/f", "user.color")
    assert exc.value.errno == errno.ENODATA
    fs.set_goal(home, 2, recursive=True)
    assert layout_of(cluster, f"{home}/f")["attr"]["goal"] == 2
    info = fs.statvfs()
    assert info.f_blocks > 0 and info.f_bfree <= info.f_blocks and info.f_namemax == 255


def test_files_made_with_a_goal_option_keep_that_many_copies(cluster, fs, home):
    with chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, goal=1) as one_copy:
        with one_copy.open(f"{home}/single", "wb") as f:
            f.write(os.urandom(5 * MiB))
        one_copy.mkdir(f"{home}/single-dir")
    layout = layout_of(cluster, f"{home}/single")
    assert layout["attr"]["goal"] == 1 and [len(c["replicas"]) for c in layout["chunks"]] == [1, 1]
    assert layout_of(cluster, f"{home}/single-dir")["attr"]["goal"] == 1


def test_the_api_and_a_mount_see_the_same_files_close_to_open(fs, home, cluster):
    local = cluster.mnt / home.lstrip("/")
    with fs.open(f"{home}/from-api", "wb") as f:
        f.write(b"written through the API" * 1000)
    assert (local / "from-api").read_bytes() == b"written through the API" * 1000
    (local / "from-mount").write_bytes(b"written on the mount")
    with fs.open(f"{home}/from-mount") as f:
        assert f.read() == b"written on the mount"
    with fs.open(f"{home}/from-api", "wb") as f:  # again, over what the mount has read before
        f.write(b"second version")
    assert (local / "from-api").read_bytes() == b"second version"
    api, mount = fs.stat(f"{home}/from-api"), os.stat(local / "from-api")
    for field in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns",
                  "st_blksize", "st_blocks"):
        assert getattr(api, field) == getattr(mount, field), field


def test_bad_paths_are_refused_before_any_call(fs, cluster):
    before = metaserver_calls(cluster)
    for path, err in [("/..", errno.EINVAL), ("/a/../../b", errno.EINVAL), ("/a\0b", errno.EINVAL),
                      ("/" + "n" * 256, errno.ENAMETOOLONG)]:
        with pytest.raises(OSError) as exc:
            fs.stat(path)
        assert exc.value.errno == err, path
        with pytest.raises(OSError) as exc:
            fs.open(path, "wb")
        assert exc.value.errno == err, path
    assert metaserver_calls(cluster) == before
    assert fs.stat("relative/..").st_ino == fs.stat("/").st_ino == 1  # a relative path is from the root


def test_a_closed_file_or_filesystem_refuses_calls_as_io_does(cluster, fs, home):
    f = fs.open(f"{home}/f", "wb")
    f.close()
    f.close()  # a second close does nothing
    for call in (lambda: f.write(b"x"), lambda: f.read(), f.tell, lambda: f.seek(0), f.flush):
        with pytest.raises(ValueError):
            call()
    with fs.open(f"{home}/f", "rb") as f, pytest.raises(io.UnsupportedOperation):
        f.write(b"x")
    other = chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file)
    still_open = other.open(f"{home}/g", "wb")
    still_open.write(b"kept")
    other.close()  # closes (commits) what is still open
    assert fs.open(f"{home}/g").read() == b"kept"
    with pytest.raises(ValueError):
        other.stat("/")


def test_a_missing_or_wrong_secret_is_refused_clearly(cluster, tmp_path):
    with pytest.raises(PermissionError) as exc:
        chunkfs.client.connect(cluster.metaserver, secret_file=tmp_path / "none")
    assert exc.value.errno == errno.EACCES and "secret" in str(exc.value)
    wrong = tmp_path / "wrong"
    wrong.write_text("x" * 64)
    with pytest.raises(PermissionError) as exc:
        chunkfs.client.connect(cluster.metaserver, secret_file=wrong)
    assert exc.value.errno == errno.EACCES and "refused the cluster secret" in str(exc.value)


def test_a_cluster_that_is_down_fails_after_retry_s(cluster):
    nobody = f"127.0.0.1:{free_port_block(1)}"
    with pytest.raises(OSError) as exc:
        chunkfs.client.connect(nobody, secret_file=cluster.secret_file, retry_s=1)
    assert exc.value.errno == errno.EIO and "cannot reach" in str(exc.value)


def test_permissions_are_the_ones_a_mount_applies(cluster, fs, home):
    fs.chmod(home, 0o755)
    with fs.open(f"{home}/private", "wb") as f:
        f.write(b"secret")
    fs.chmod(f"{home}/private", 0o600)
    with chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, uid=4321, gid=4321,
                                groups=[]) as user:
        with pytest.raises(PermissionError) as exc:
            user.open(f"{home}/private")
        assert exc.value.errno == errno.EACCES
        with pytest.raises(PermissionError) as exc:
            user.open(f"{home}/mine", "wb")  # no write permission on the directory
        assert exc.value.errno == errno.EACCES
        with pytest.raises(PermissionError) as exc:
            user.chmod(f"{home}/private", 0o644)
        assert exc.value.errno == errno.EPERM
        fs.mkdir(f"{home}/open", 0o777)
        fs.chmod(f"{home}/open", 0o777)
        with user.open(f"{home}/open/mine", "wb") as f:
            f.write(b"mine")
        st = fs.stat(f"{home}/open/mine")
        assert (st.st_uid, st.st_gid) == (4321, 4321)


def test_a_put_does_not_replace_anothers_file_in_a_sticky_directory(cluster, fs, home, tmp_path):
    fs.chmod(home, 0o755)
    fs.mkdir(f"{home}/tmp")
    fs.chmod(f"{home}/tmp", 0o1777)  # as /tmp
    source = tmp_path / "source"
    source.write_bytes(b"replacement" * 10_000)
    (tmp_path / "small").write_bytes(b"small replacement")

    def user(uid: int):
        return chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, uid=uid, gid=uid, groups=[])

    with user(4321) as owner, user(4322) as other:
        with owner.open(f"{home}/tmp/theirs", "wb") as f:
            f.write(b"owner's")
        for local in (source, tmp_path / "small"):  # a chunked file and an inline one
            with pytest.raises(PermissionError) as exc:
                other.put_file(local, f"{home}/tmp/theirs")
            assert exc.value.errno == errno.EPERM
            assert fs.open(f"{home}/tmp/theirs").read() == b"owner's"
        owner.put_file(tmp_path / "small", f"{home}/tmp/theirs")  # the owner may
        other.put_file(source, f"{home}/tmp/new")  # and anyone may make a new name
    assert fs.open(f"{home}/tmp/theirs").read() == b"small replacement"
    assert sorted(fs.listdir(f"{home}/tmp")) == ["new", "theirs"]


def test_put_and_get_a_file_with_progress(fs, home, tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(10 * MiB + 7))
    moved: list[int] = []
    fs.put_file(source, f"{home}/copy", moved.append)
    assert sum(moved) == source.stat().st_size
    assert fs.listdir(home) == ["copy"]  # nothing left under a temporary name
    with pytest.raises(FileExistsError) as exc:
        fs.put_file(source, f"{home}/copy", exclusive=True)
    assert exc.value.errno == errno.EEXIST
    back = tmp_path / "back"
    got: list[int] = []
    fs.get_file(f"{home}/copy", back, got.append)
    assert back.read_bytes() == source.read_bytes() and sum(got) == source.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "source"]


def test_a_file_changing_while_put_reads_it_fails_and_stores_nothing(fs, home, tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(9 * MiB))

    def grow(_moved: int) -> None:
        with open(source, "ab") as f:
            f.write(b"more")

    with pytest.raises(OSError) as exc:
        fs.put_file(source, f"{home}/copy", grow)
    assert exc.value.errno == errno.EBUSY and "changed while it was read" in str(exc.value)
    assert fs.listdir(home) == []


def test_ctrl_c_during_put_leaves_nothing_under_the_target_name(cluster, fs, home, tmp_path):
    source = tmp_path / "source"
    # big enough that the put cannot end between the Ctrl-C (in the client's trio thread) and
    # the cancel it sends there from the main thread, however loaded the machine (24 MiB could)
    source.write_bytes(os.urandom(64 * MiB))
    before = cluster.status()["chunks"]
    script = textwrap.dedent(f"""
        import os, signal, chunkfs.client
        fs = chunkfs.client.connect({cluster.metaserver!r}, secret_file={str(cluster.secret_file)!r})
        moved = []
        def progress(n):
            moved.append(n)
            if len(moved) == 2:  # a few chunks in: the user presses Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
        try:
            fs.put_file({str(source)!r}, {home + "/big"!r}, progress)
        except KeyboardInterrupt:
            print("interrupted after", sum(moved), flush=True)
        fs.close()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            preexec_fn=sigint_as_at_a_terminal)
    assert "interrupted after" in result.stdout, result.stderr
    assert fs.listdir(home) == []
    wait_until(lambda: cluster.status()["chunks"] <= before, 30, "the interrupted upload's chunks collected")


def test_the_async_face(cluster):
    async def main() -> None:
        async with chunkfs.client.open_filesystem(cluster.metaserver, secret_file=cluster.secret_file) as afs:
            await afs.makedirs("/async", exist_ok=True)
            async with await afs.open("/async/f", "wb") as f:
                await f.write(b"from trio")
            async with await afs.open("/async/f") as f:
                assert await f.read(4) == b"from"
                await f.seek(5)
                assert await f.read() == b"trio"
            assert (await afs.stat("/async/f")).st_size == 9
            assert [d async for d in afs.walk("/async")] == [("/async", [], ["f"])]

    trio.run(main)


def test_small_writes_are_kept_and_handed_over_together(fs, home, monkeypatch):
    calls = []
    real_call = fs._thread.call
    monkeypatch.setattr(fs._thread, "call", lambda fn, *args: calls.append(fn) or real_call(fn, *args))
    with fs.open(f"{home}/small", "xb") as f:
        f.write(b"x" * 4096)
    assert len(calls) == 2, calls  # the open, and the close with the write kept before it
    calls.clear()
    with fs.open(f"{home}/lines.csv", "wb") as f:
        for i in range(20_000):
            f.write(b"%d,line %d\n" % (i, i))
        assert f.tell() == sum(len(b"%d,line %d\n" % (i, i)) for i in range(20_000))
    assert len(calls) < 10, len(calls)  # ~290 KiB in lines of ~15 bytes: a hand-off per 256 KiB
    assert fs.open(f"{home}/lines.csv").read() == b"".join(b"%d,line %d\n" % (i, i) for i in range(20_000))
    with fs.open(f"{home}/small", "ab") as f:
        f.write(b"yz")
        assert f.tell() == 4098  # appended at the end
    with fs.open(f"{home}/small", "r+b") as f:
        f.write(b"ab")
        assert f.read(3) == b"xxx" and f.tell() == 5  # the kept write went first
        f.seek(0)
        assert f.read(2) == b"ab"
    assert fs.open(f"{home}/small").read() == b"ab" + b"x" * 4094 + b"yz"


def test_a_script_that_forgets_to_close_still_stores_its_file(cluster, fs, home):
    script = textwrap.dedent(f"""
        import chunkfs.client
        fs = chunkfs.client.connect({cluster.metaserver!r}, secret_file={str(cluster.secret_file)!r})
        f = fs.open({home + "/kept"!r}, "wb")
        f.write(b"committed at exit")
        fs.open({home + "/dropped"!r}, "wb").write(b"committed when dropped")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert fs.open(f"{home}/kept").read() == b"committed at exit"
    assert fs.open(f"{home}/dropped").read() == b"committed when dropped"


def test_importing_the_client_does_not_start_anything():
    code = "import threading, chunkfs.client; print(threading.active_count())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "1"


def test_written_files_are_in_the_mount_too(cluster, fs, home):
    fs.put_file(Path(__file__), f"{home}/this.py")
    assert (cluster.mnt / home.lstrip("/") / "this.py").read_bytes() == Path(__file__).read_bytes()


def test_the_readme_snippet_writes_a_csv(cluster, tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    snippet = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace('"127.0.0.1:9520"', repr(cluster.metaserver)).replace('".chunkfs/secret"',
                                                                                    repr(str(cluster.secret_file)))
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[['region', 'units'], ['north', '120'], ['south', '95']]"
    assert (cluster.mnt / "reports" / "sales.csv").read_bytes() == b"region,units\r\nnorth,120\r\nsouth,95\r\n"


# ---- the core's behaviour, checked without FUSE (moved here from the mount's tests) ----------------

def layout_of(cluster, path: str) -> dict:
    """What `chunkfs info` says of a file (through the cluster's mount, which only names it)."""
    return json.loads(chunkfs_command("info", cluster.mnt / path.lstrip("/"), "--dir", cluster.dir, "--json").stdout)


def test_a_small_file_lives_inline_and_moves_to_chunks_when_it_grows(cluster, fs, home):
    path = f"{home}/grows"
    model = bytearray(os.urandom(3000))
    with fs.open(path, "wb") as f:
        f.write(model)
    layout = layout_of(cluster, path)
    assert layout["inline"] == 3000 and layout["chunks"] == []
    assert fs.stat(path).st_blocks == (3000 + 511) // 512

    with fs.open(path, "r+b") as f:  # past the inline limit: chunk 0 goes to the chunkservers
        f.seek(INLINE_MAX_BYTES + 10)
        f.write(b"tail")
    model += bytes(INLINE_MAX_BYTES + 10 - len(model)) + b"tail"
    layout = layout_of(cluster, path)
    assert layout["inline"] is None and [c["index"] for c in layout["chunks"]] == [0]
    assert fs.open(path).read() == model

    with fs.open(path, "wb") as f:  # truncated at open and rewritten: inline once more, the chunk goes
        f.write(b"small again")
    layout = layout_of(cluster, path)
    assert layout["inline"] == len(b"small again") and layout["chunks"] == []
    assert fs.open(path).read() == b"small again"

    fs.truncate(path, 5)
    assert fs.open(path).read() == b"small"
    fs.truncate(path, 9 * MiB)  # a hole after the inline bytes reads as zeros
    assert fs.open(path).read() == b"small" + bytes(9 * MiB - 5)


def test_inline_files_match_a_local_model_under_random_edits(fs, home, tmp_path):
    rng = random.Random(7)
    subject, model = f"{home}/edited", tmp_path / "model"
    fs.open(subject, "wb").close()
    model.write_bytes(b"")
    for step in range(60):
        offset = rng.choice([0, rng.randrange(INLINE_MAX_BYTES), INLINE_MAX_BYTES - 2, rng.randrange(2 * INLINE_MAX_BYTES)])
        data = os.urandom(rng.choice([1, 100, 5000, INLINE_MAX_BYTES // 2]))
        cut = rng.random() < 0.2
        size = rng.randrange(2 * INLINE_MAX_BYTES)
        with fs.open(subject, "r+b") as remote, open(model, "r+b") as local:
            for f in (remote, local):
                if cut:
                    f.truncate(size)
                else:
                    f.seek(offset)
                    f.write(data)
        with fs.open(subject) as remote:
            assert remote.read() == model.read_bytes(), f"differs after step {step}"
        assert fs.stat(subject).st_size == model.stat().st_size


def test_files_made_in_a_directory_made_here_cost_one_call_each(cluster, fs, home):
    fs.mkdir(f"{home}/fresh")
    before = metaserver_calls(cluster)
    for i in range(30):
        with fs.open(f"{home}/fresh/f{i}", "xb") as f:
            f.write(b"x" * 100)
    after = metaserver_calls(cluster)
    made = {op: after.get(op, 0) - before.get(op, 0) for op in after if after.get(op, 0) != before.get(op, 0)}
    assert made.get("commit") == 30 and not made.get("lookup") and not made.get("create"), made
    assert sorted(fs.listdir(f"{home}/fresh")) == sorted(f"f{i}" for i in range(30))
    with pytest.raises(FileExistsError) as exc:
        fs.open(f"{home}/fresh/f3", "xb")
    assert exc.value.errno == errno.EEXIST


def test_an_unchanged_file_opens_and_reads_without_a_call_until_another_client_changes_it(cluster, fs, home):
    """Open leases: a client that opened a file opens it again, and reads it if it is inline,
    with no metaserver call while nobody changed it; once another client's close returned, the
    next open sees the new version (close-to-open)."""
    inline, chunked = f"{home}/inline", f"{home}/chunked"
    small, big = b"tiny" * 100, os.urandom(INLINE_MAX_BYTES + 1000)
    with fs.open(inline, "wb") as f:
        f.write(small)
    with fs.open(chunked, "wb") as f:
        f.write(big)
    with chunkfs.client.connect(cluster.metaserver, secret_file=cluster.secret_file, retry_s=5) as other:
        def read_both() -> tuple[bytes, bytes]:
            with other.open(inline) as a, other.open(chunked) as b:
                return a.read(), b.read()

        assert read_both() == (small, big)

        def without_calls() -> bool:
            before = metaserver_calls(cluster)
            assert read_both() == (small, big)
            after = metaserver_calls(cluster)
            return all(after[op] == before.get(op, 0) for op in after)

        # (a first open may fall between two answers of the new client's feed: then it asks)
        wait_until(without_calls, 30, "opens and reads of two unchanged files made without a call")
        with fs.open(inline, "wb") as f:
            f.write(b"changed")
        with other.open(inline) as a:
            assert a.read() == b"changed"
        with fs.open(chunked, "r+b") as f:
            f.seek(10)
            f.write(b"X")
        with other.open(chunked) as b:
            assert b.read() == big[:10] + b"X" + big[11:]


def test_concat_moves_whole_chunks_and_refuses_what_would_need_a_copy(fs, home, cluster):
    """concat appends files by moving their chunks: the target reads as the sources in order,
    the sources are left empty. A source that is not a whole number of chunks (but the last),
    or one kept inline, is EINVAL and nothing changes."""
    pieces = [os.urandom(2 * CHUNK_SIZE), os.urandom(CHUNK_SIZE), os.urandom(CHUNK_SIZE // 2 + 3)]
    for n, data in enumerate(pieces):
        with fs.open(f"{home}/part{n}", "wb") as f:
            f.write(data)
    with fs.open(f"{home}/target", "wb"):
        pass
    fs.concat(f"{home}/target", [f"{home}/part0", f"{home}/part1", f"{home}/part2"])
    with fs.open(f"{home}/target", "rb") as f:
        assert f.readall() == b"".join(pieces)
    assert (cluster.mnt / home.lstrip("/") / "target").read_bytes() == b"".join(pieces)
    assert [fs.stat(f"{home}/part{n}").st_size for n in range(3)] == [0, 0, 0]

    with fs.open(f"{home}/uneven", "wb") as f:
        f.write(os.urandom(CHUNK_SIZE + 1))
    with fs.open(f"{home}/small", "wb") as f:
        f.write(b"inline" * 10)
    assert INLINE_MAX_BYTES > 60
    with fs.open(f"{home}/second", "wb"):
        pass
    for sources in ([f"{home}/uneven", f"{home}/small"], [f"{home}/small"], [f"{home}/second", f"{home}/second"]):
        with pytest.raises(OSError) as refused:
            fs.concat(f"{home}/second", sources)
        assert refused.value.errno == errno.EINVAL
    assert fs.stat(f"{home}/uneven").st_size == CHUNK_SIZE + 1 and fs.stat(f"{home}/second").st_size == 0
    with pytest.raises(OSError) as not_aligned:  # the target must end on a chunk boundary
        fs.concat(f"{home}/uneven", [f"{home}/target"])
    assert not_aligned.value.errno == errno.EINVAL
