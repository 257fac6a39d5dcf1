"""Units: which file goes where in `chunkfs put`/`get` (`chunkfs.cli.transfer.plan`), on two
in-memory sides, named as `cp` and `cp -r` would name them."""

from __future__ import annotations

import posixpath

import pytest
import trio

from chunkfs.cli import transfer
from chunkfs.cli.client_edge import Failures


class TreeSide:
    """A side made of a dict: path -> size for files, None for directories."""

    def __init__(self, entries: dict[str, int | None]) -> None:
        self.entries = entries

    async def kind(self, path: str) -> str | None:
        if path not in self.entries:
            return None
        return "dir" if self.entries[path] is None else "file"

    async def walk(self, top: str) -> list[tuple[str, list[str]]]:
        dirs = sorted(p for p, size in self.entries.items() if size is None and (p == top or p.startswith(top + "/")))
        return [(d, sorted(posixpath.basename(p) for p, size in self.entries.items()
                           if size is not None and posixpath.dirname(p) == d)) for d in dirs]

    async def size(self, path: str) -> int:
        size = self.entries[path]
        assert size is not None
        return size

    async def make_directory(self, path: str) -> None:
        self.entries[path] = None


LOCAL = {"/src": None, "/src/a": 1, "/src/sub": None, "/src/sub/b": 2, "/one": 7}


def make_plan(sources, target, remote, recursive=False):
    failures = Failures("put")
    result = trio.run(transfer.plan, sources, target, TreeSide(dict(LOCAL)), TreeSide(remote), recursive, failures)
    return result, failures


@pytest.mark.parametrize(("target", "remote", "expected"), [
    ("/x", {"/": None}, "/x"),                  # a new name
    ("/d", {"/": None, "/d": None}, "/d/one"),  # into an existing directory
    ("/new/", {"/": None}, "/new/one"),         # a trailing slash: a directory, made
])
def test_one_file(target, remote, expected):
    plan, failures = make_plan(["/one"], target, remote)
    assert [(c.source, c.target, c.size_bytes) for c in plan.copies] == [("/one", expected, 7)]
    assert plan.directories == (["/new"] if target.endswith("/") else [])
    assert failures.count == 0


def test_several_files_go_into_the_target(capsys):
    plan, _ = make_plan(["/one", "/src/a"], "/d", {"/": None})
    assert plan.directories == ["/d"]
    assert [c.target for c in plan.copies] == ["/d/one", "/d/a"]


def test_a_directory_needs_recursive(capsys):
    plan, failures = make_plan(["/src", "/one"], "/d/", {"/": None})
    assert failures.count == 1 and [c.source for c in plan.copies] == ["/one"]
    assert capsys.readouterr().err == "chunkfs: put: /src: Is a directory (use -r)\n"


@pytest.mark.parametrize(("target", "remote", "root"), [
    ("/copy", {"/": None}, "/copy"),               # cp -r src copy: copy is the tree
    ("/d", {"/": None, "/d": None}, "/d/src"),     # into an existing directory
])
def test_a_tree(target, remote, root):
    plan, failures = make_plan(["/src"], target, remote, recursive=True)
    assert plan.directories == [root, f"{root}/sub"]
    assert [(c.source, c.target) for c in plan.copies] == [("/src/a", f"{root}/a"), ("/src/sub/b", f"{root}/sub/b")]
    assert plan.total_bytes == 3 and failures.count == 0


def test_a_file_in_the_way_of_several_sources(capsys):
    plan, failures = make_plan(["/one", "/src/a"], "/f", {"/": None, "/f": 3})
    assert plan.copies == [] and failures.count == 1
    assert capsys.readouterr().err == "chunkfs: put: /f: Not a directory\n"
