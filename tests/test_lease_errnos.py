"""In a directory this mount holds a lease on, names are answered here without a call: those
answers are exactly what the metaserver gives without the lease (the errno table below runs on
a mount with dir_leases on and one with it off, in a directory each made itself)."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import another_mount

LONG = "n" * 256  # one byte past NAME_MAX
LONGEST = "n" * 255


def errno_of(call) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def errno_table(d) -> dict[str, int]:
    """Each call on a name too long, and a few on names that are fine but missing."""
    (d / "file").write_bytes(b"x")
    (d / "sub").mkdir()
    return {
        "stat": errno_of(lambda: os.stat(d / LONG)),
        "lstat": errno_of(lambda: os.lstat(d / LONG)),
        "chmod": errno_of(lambda: os.chmod(d / LONG, 0o600)),
        "chown": errno_of(lambda: os.chown(d / LONG, 0, 0)),
        "truncate": errno_of(lambda: os.truncate(d / LONG, 0)),
        "unlink": errno_of(lambda: os.unlink(d / LONG)),
        "rmdir": errno_of(lambda: os.rmdir(d / LONG)),
        "link from": errno_of(lambda: os.link(d / LONG, d / "other")),
        "link to": errno_of(lambda: os.link(d / "file", d / LONG)),
        "rename from": errno_of(lambda: os.rename(d / LONG, d / "other")),
        "rename to": errno_of(lambda: os.rename(d / "file", d / LONG)),
        "open": errno_of(lambda: os.open(d / LONG, os.O_RDONLY)),
        "create": errno_of(lambda: os.close(os.open(d / LONG, os.O_CREAT | os.O_WRONLY, 0o644))),
        "mkdir": errno_of(lambda: os.mkdir(d / LONG)),
        "symlink": errno_of(lambda: os.symlink("file", d / LONG)),
        "stat longest missing": errno_of(lambda: os.stat(d / LONGEST)),
        "unlink longest missing": errno_of(lambda: os.unlink(d / LONGEST)),
        "rmdir a file": errno_of(lambda: os.rmdir(d / "file")),
        "unlink a directory": errno_of(lambda: os.unlink(d / "sub")),
        "stat through a file": errno_of(lambda: os.stat(d / "file" / "x")),
    }


EXPECTED = {name: errno.ENAMETOOLONG for name in (
    "stat", "lstat", "chmod", "chown", "truncate", "unlink", "rmdir", "link from", "link to", "rename from",
    "rename to", "open", "create", "mkdir", "symlink")} | {
    "stat longest missing": errno.ENOENT, "unlink longest missing": errno.ENOENT, "rmdir a file": errno.ENOTDIR,
    "unlink a directory": errno.EISDIR, "stat through a file": errno.ENOTDIR}


@pytest.fixture
def unleased_mount(cluster, tmp_path):
    with another_mount(cluster, tmp_path / "no-leases", "dir_leases=false") as target:
        yield target


def test_the_errnos_are_the_same_with_and_without_a_lease(cluster, unleased_mount):
    (cluster.mnt / "leased-here").mkdir()  # made by this mount: leased to it
    leased = errno_table(cluster.mnt / "leased-here")
    (unleased_mount / "not-leased").mkdir()
    unleased = errno_table(unleased_mount / "not-leased")
    names = {name: errno.errorcode.get(e, e) for name, e in EXPECTED.items()}
    assert {n: errno.errorcode.get(e, e) for n, e in leased.items()} == names
    assert {n: errno.errorcode.get(e, e) for n, e in unleased.items()} == names
