"""Real programs on the mount: git, make with gcc, SQLite in both journal modes with readers
running alongside the writer, and tar archives that round-trip."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

GIT, MAKE, CC, TAR = (shutil.which(p) for p in ("git", "make", "gcc", "tar"))
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1"}


def run(*args, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env or GIT_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def workdir(cluster, request):
    path = cluster.mnt / request.node.name
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_git_clone_status_commit_gc_fsck(workdir, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    run(GIT, "init", "-q", "-b", "main", cwd=origin)
    for i in range(30):
        (origin / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
        (origin / "sub").mkdir(exist_ok=True)
        (origin / "sub" / f"data{i}.bin").write_bytes(os.urandom(1000 * i))
        run(GIT, "add", "-A", cwd=origin)
        run(GIT, "commit", "-q", "-m", f"commit {i}", cwd=origin)
    run(GIT, "clone", "-q", origin, workdir / "clone", cwd=workdir)
    clone = workdir / "clone"
    assert run(GIT, "status", "--porcelain", cwd=clone) == ""
    (clone / "file3.txt").write_text("changed\n")
    (clone / "new.txt").write_text("new\n")
    os.chmod(clone / "new.txt", 0o755)
    assert run(GIT, "status", "--porcelain", cwd=clone).split("\n")[:2] == [" M file3.txt", "?? new.txt"]
    run(GIT, "add", "-A", cwd=clone)
    run(GIT, "commit", "-q", "-m", "on chunkfs", cwd=clone)
    assert run(GIT, "status", "--porcelain", cwd=clone) == ""
    run(GIT, "gc", "-q", "--aggressive", cwd=clone)  # repacks: mmap, rename, many small files
    run(GIT, "fsck", "--full", "--strict", cwd=clone)
    assert run(GIT, "log", "--format=%s", "-n", "2", cwd=clone).split("\n")[:2] == ["on chunkfs", "commit 29"]
    assert run(GIT, "ls-files", "-s", "new.txt", cwd=clone).startswith("100755")
    run(GIT, "checkout", "-q", "HEAD~5", cwd=clone)
    assert run(GIT, "status", "--porcelain", cwd=clone) == ""
    assert not (clone / "new.txt").exists()


@pytest.mark.skipif(MAKE is None or CC is None, reason="make and gcc are not installed")
def test_make_builds_and_rebuilds_only_what_changed(workdir):
    (workdir / "greet.h").write_text("const char *greeting(void);\n")
    (workdir / "greet.c").write_text('#include "greet.h"\nconst char *greeting(void) { return "hello"; }\n')
    (workdir / "main.c").write_text('#include <stdio.h>\n#include "greet.h"\n'
                                    'int main(void) { puts(greeting()); return 0; }\n')
    (workdir / "Makefile").write_text(
        "prog: main.o greet.o\n\t$(CC) -o $@ $^\n"
        "%.o: %.c greet.h\n\t$(CC) -c -O1 -o $@ $<\n"
        "clean:\n\trm -f prog *.o\n")
    run(MAKE, "-s", cwd=workdir)
    assert run(workdir / "prog", cwd=workdir) == "hello\n"
    assert subprocess.run([MAKE, "-q"], cwd=workdir).returncode == 0  # up to date: mtimes hold
    time.sleep(0.02)  # a duration, not a wait: the edited greet.c must be newer than greet.o by its mtime
    (workdir / "greet.c").write_text('#include "greet.h"\nconst char *greeting(void) { return "again"; }\n')
    out = run(MAKE, cwd=workdir)
    assert "greet.c" in out and "main.c" not in out
    assert run(workdir / "prog", cwd=workdir) == "again\n"
    run(MAKE, "-s", "clean", cwd=workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["Makefile", "greet.c", "greet.h", "main.c"]


READER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
seen, deadline = 0, time.monotonic() + 60
while time.monotonic() < deadline:
    rows, total = db.execute("select count(*), coalesce(sum(value), 0) from t").fetchone()
    assert total == rows * (rows - 1) // 2, (rows, total)  # every transaction is seen whole or not at all
    assert rows >= seen
    seen = rows
    if rows >= int(sys.argv[2]):
        break
    time.sleep(0.005)  # the reader's pace between looks, not a wait for the writer
print(seen)
"""


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_sqlite_with_concurrent_readers(workdir, journal):
    path = workdir / "db.sqlite"
    db = sqlite3.connect(path, timeout=30)
    assert db.execute(f"pragma journal_mode={journal}").fetchone()[0] == journal
    db.execute("create table t (id integer primary key, value integer, pad blob)")
    db.commit()
    rows = 400
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(rows)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for i in range(rows):
            db.execute("insert into t (id, value, pad) values (?, ?, ?)", (i, i, os.urandom(200)))
            if i % 3 == 2 or i == rows - 1:
                db.commit()
        for reader in readers:
            out, err = reader.communicate(timeout=120)
            assert reader.returncode == 0, err
            assert int(out) == rows
    finally:
        for reader in readers:
            reader.kill()
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    db.execute("delete from t where id % 2 = 0")
    db.commit()
    db.execute("vacuum")
    db.close()
    again = sqlite3.connect(path)
    assert again.execute("select count(*) from t").fetchone()[0] == rows // 2
    assert again.execute("pragma integrity_check").fetchone()[0] == "ok"
    again.close()


def tree_digest(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), oct(st.st_mode))
        elif path.is_dir():
            out[rel] = ("dir", oct(st.st_mode), st.st_mtime_ns // 10**9)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), oct(st.st_mode),
                        st.st_mtime_ns // 10**9, st.st_nlink)
    return out


@pytest.mark.skipif(TAR is None, reason="tar is not installed")
def test_tar_round_trip(workdir, tmp_path):
    source = tmp_path / "source"
    (source / "deep" / "er").mkdir(parents=True)
    for i in range(50):
        (source / f"f{i}").write_bytes(os.urandom(i * 997))
    (source / "big").write_bytes(os.urandom(9 * 1024 * 1024 + 17))  # three chunks
    (source / "deep" / "er" / "x").write_text("x")
    os.chmod(source / "deep" / "er" / "x", 0o4711)
    os.symlink("../f1", source / "deep" / "link")
    os.link(source / "f2", source / "hard")
    with open(source / "sparse", "wb") as f:
        f.truncate(6 * 1024 * 1024)
        f.seek(5 * 1024 * 1024)
        f.write(b"tail")
    os.utime(source / "f3", (1_000_000_000, 1_000_000_000))
    archive = tmp_path / "a.tar"
    run(TAR, "-C", source, "-cSf", archive, ".", cwd=tmp_path)
    run(TAR, "-C", workdir, "-xpf", archive, cwd=tmp_path)
    run(TAR, "-C", workdir, "-df", archive, cwd=tmp_path)  # tar's own comparison: contents, modes, times
    assert tree_digest(workdir) == tree_digest(source)
    back, copy = tmp_path / "back.tar", tmp_path / "copy"
    run(TAR, "-C", workdir, "-cSf", back, ".", cwd=tmp_path)
    copy.mkdir()
    run(TAR, "-C", copy, "-xpf", back, cwd=tmp_path)
    assert tree_digest(copy) == tree_digest(source)
