"""chunkfs behaves like a local filesystem: random sequences of operations run on a chunkfs
directory and on a local one at once must give the same results, the same errnos and the same
trees (contents, sizes, modes, owners, link counts, listings, symlink targets, user.* xattrs).

The operations run in a worker process (tests/posix_worker.py) that keeps files open across
steps; the non-root test runs that worker as `nobody`, so the kernel's permission checks on
chunkfs's modes take part. Not compared: times, directory sizes, block counts. Not exercised:
POSIX ACLs (tests/test_acl.py). Files and directories stay open across unlink, rmdir and
rename, so their use after the last name is gone is compared too.
The `long` variant (run by `make test-long`) runs many more and longer sequences.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from chunkfs import CHUNK_SIZE
from long_budget import LongBudget

WORKER = Path(__file__).with_name("posix_worker.py")
NOBODY = 65534
MiB = 1024 * 1024

# The default run (CI's) is derandomized: the same sequences every run, so a red CI means a
# change broke one of them, never that this run drew a new one. The long variant explores at random
# (as does any run given `--hypothesis-seed`, to replay a sequence found that way).
SHORT = settings(max_examples=25, stateful_step_count=30, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck), derandomize=True)
LONG = settings(SHORT, max_examples=300, stateful_step_count=80, derandomize=False)
LONG_BATCH = 10  # sequences per run under make test-long's budget (tests/long_budget.py): about a minute


# ---- the worker ---------------------------------------------------------------------------------
class Twin:
    """The client side of a posix_worker process: every call runs on both trees. A call cut
    short (a time-out, an interrupt) leaves a reply in the pipe, so the worker is replaced."""

    def __init__(self, fs_root: str, ref_root: str, python: str, *, user: int | None = None,
                 cwd: str | None = None) -> None:
        ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
        self.argv = [python, str(WORKER), fs_root, ref_root]
        self.popen_args = {"cwd": cwd, **ids}
        self.proc = self._start()
        self.open_slots: list[int] = []
        self.history: list[str] = []  # the calls since the last reset, for failure messages

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **self.popen_args)

    def call(self, method: str, *args):
        if method == "reset":
            self.history = []
        elif method != "snapshot":
            self.history.append(f"{method}{args!r}")
        try:
            pickle.dump((method, tuple(map(plain, args))), self.proc.stdin)
            self.proc.stdin.flush()
            (kind, value), self.open_slots = pickle.load(self.proc.stdout)
        except BaseException:
            self.close()
            self.proc, self.open_slots = self._start(), []
            raise
        assert kind == "ok", f"the worker crashed in {method}{args}: {value}"
        return value

    def story(self) -> str:
        """The calls of this example so far: a failure the replay does not repeat (a race)
        still shows what led to it."""
        return "\ncalls since the reset:\n  " + "\n  ".join(self.history)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def python_for(user: int) -> str | None:
    """A python3 that `user` may execute (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import ctypes, hashlib, pickle"], capture_output=True,
                                   user=user, group=user, extra_groups=[], cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def supports_user_xattrs(path: str) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


# ---- strategies -----------------------------------------------------------------------------------
class Pattern:
    """Bytes given by a seed and a length, so a failing step prints short."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed, self.size = seed, size

    def __repr__(self) -> str:
        return f"Pattern(seed={self.seed}, size={self.size})"

    def bytes(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


class Mode(int):
    """A mode that prints in octal in a failing sequence."""

    def __repr__(self) -> str:
        return oct(self)


def plain(arg):
    """An argument as the worker takes it (it knows neither Pattern nor Mode)."""
    if isinstance(arg, Pattern):
        return arg.bytes()
    return int(arg) if isinstance(arg, Mode) else arg


NAMES, INNER_NAMES = "abcd", "ab"  # fewer names below the top, so deeper paths meet something too
paths = st.sampled_from([1, 1, 1, 2, 2, 3]).flatmap(
    lambda depth: st.tuples(st.sampled_from(NAMES), *[st.sampled_from(INNER_NAMES)] * (depth - 1))).map("/".join)


def mode_choices(*choices: int) -> st.SearchStrategy:
    return st.sampled_from([Mode(m) for m in choices])


dir_modes = mode_choices(0o755, 0o755, 0o700, 0o2775, 0o1777)


def tree_below(names: str, depth: int) -> st.SearchStrategy:
    """{name: "file" | "symlink" | (directory mode, {name: ...})}: a tree to start from."""
    leaf = st.sampled_from(["file", "file", "symlink"])
    entry = leaf if depth == 1 else st.one_of(st.tuples(dir_modes, tree_below(INNER_NAMES, depth - 1)), leaf)
    return st.dictionaries(st.sampled_from(names), entry)


initial_trees = tree_below(NAMES, 3)
near_chunk_ends = st.builds(lambda k, d: max(0, k * CHUNK_SIZE + d), st.integers(1, 2), st.integers(-4096, 4096))
offsets = st.one_of(st.integers(0, 8192), near_chunk_ends, st.integers(0, 9 * MiB))
sizes = st.one_of(st.integers(0, 8192), near_chunk_ends, st.integers(0, 10 * MiB))
read_sizes = st.one_of(st.integers(0, 8192), st.integers(0, 2 * CHUNK_SIZE + 10))
payloads = st.one_of(st.binary(min_size=1, max_size=64),
                 st.builds(Pattern, st.integers(0, 2**32), st.integers(1, 300_000)))
slots = st.integers(0, 3)
modes = st.one_of(mode_choices(0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o2755, 0o4755, 0o1777),
                  st.integers(0, 0o7777).map(Mode))
link_targets = st.sampled_from(["a", "b", "c/d", "a/b/c", "missing", "."])
xattr_names = st.sampled_from(["user.x", "user.y", "user." + "z" * 40])
xattr_values = st.one_of(st.binary(max_size=16), st.builds(lambda n: bytes(range(256)) * n, st.integers(0, 3)))
ACCESS = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR}
EXTRA = {"O_CREAT": os.O_CREAT, "O_EXCL": os.O_EXCL, "O_TRUNC": os.O_TRUNC, "O_APPEND": os.O_APPEND,
         "O_NOFOLLOW": os.O_NOFOLLOW, "O_DIRECTORY": os.O_DIRECTORY}
open_flags = st.builds(lambda access, extra: "|".join([access, *extra]), st.sampled_from(list(ACCESS)),
                       st.lists(st.sampled_from(list(EXTRA)), unique=True, max_size=3))


def flag_bits(flags: str) -> int:
    bits = 0
    for name in flags.split("|"):
        bits |= ACCESS.get(name, 0) | EXTRA.get(name, 0)
    return bits


# ---- the model ------------------------------------------------------------------------------------
def differences(fs: dict, ref: dict) -> list[str]:
    out = []
    for path in sorted(set(fs) | set(ref)):
        a, b = fs.get(path), ref.get(path)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{path}: only in {'local' if a is None else 'chunkfs'}: {a or b}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{path}: {key}: chunkfs {a.get(key)!r} != local {b.get(key)!r}")
    return out


class PosixModel(RuleBasedStateMachine):
    """Each rule runs one operation on both trees; outcomes and, after every step, the whole
    trees must match. `twin` is set on a subclass by the test."""

    twin: Twin

    def __init__(self) -> None:
        super().__init__()
        self.twin.call("reset")

    def same(self, what: str, outcomes: list) -> None:
        fs, ref = outcomes
        assert fs == ref, f"{what}: chunkfs gave {fs!r}, local gave {ref!r}" + self.twin.story()

    def path_op(self, op: str, *args) -> None:
        self.same(f"{op}{args}", self.twin.call("path_op", op, *args))

    def fd_op(self, slot: int, op: str, *args) -> None:
        self.same(f"{op} on slot {slot}{args}", self.twin.call("fd_op", slot, op, *args))

    def open_slot(self, data) -> int:
        return data.draw(st.sampled_from(self.twin.open_slots), label="slot")

    def has_open_files(self) -> bool:
        return bool(self.twin.open_slots)

    # ---- whole files and the namespace -------------------------------------------------------------
    @initialize(tree=initial_trees, offset=offsets, data=payloads, pointing_to=link_targets,
                opened=st.lists(paths, max_size=2))
    def start_from(self, tree, offset, data, pointing_to, opened):
        self.populate(tree, offset, data, pointing_to)
        for slot, path in enumerate(opened):
            self.open(slot, path, "O_RDWR|O_CREAT", 0o644)

    def populate(self, tree, offset, data, pointing_to, parent=""):
        """A starting tree, so that most operations meet something."""
        for name, kind in sorted(tree.items()):
            path = f"{parent}/{name}" if parent else name
            if isinstance(kind, tuple):
                self.path_op("mkdir", path, 0o755)
                if kind[0] != 0o755:
                    self.path_op("chmod", path, kind[0], True)  # mkdir itself drops the setgid bit
                self.populate(kind[1], offset, data, pointing_to, path)
            elif kind == "file":
                self.path_op("write_file", path, offset if name < "c" else 0, data)
            else:
                self.path_op("symlink", path, pointing_to)

    @rule(path=paths, offset=offsets, data=payloads)
    def write_file(self, path, offset, data):
        self.path_op("write_file", path, offset, data)

    @rule(path=paths, offset=near_chunk_ends, data=payloads)
    def write_file_near_a_chunk_end(self, path, offset, data):
        self.path_op("write_file", path, offset, data)

    @rule(path=paths, size=sizes)
    def truncate(self, path, size):
        self.path_op("truncate", path, size)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.path_op("rename", src, dst)

    @rule(src=paths, dst=paths, flags=st.sampled_from([1, 2]))
    def rename_noreplace_or_exchange(self, src, dst, flags):
        self.path_op("renameat2", src, dst, flags)

    @rule(src=paths, dst=paths, follow=st.booleans())
    def link(self, src, dst, follow):
        self.path_op("link", src, dst, follow)

    @rule(path=paths)
    def unlink(self, path):
        self.path_op("unlink", path)

    @rule(path=paths)
    def rmdir(self, path):
        self.path_op("rmdir", path)

    @rule(path=paths, mode=mode_choices(0o755, 0o700, 0o2775, 0o1777, 0o555))
    def mkdir(self, path, mode):
        self.path_op("mkdir", path, mode)

    @rule(path=paths)
    def mkfifo(self, path):
        self.path_op("mkfifo", path, 0o644)

    @rule(path=paths, mode=modes)
    def chmod(self, path, mode):
        self.path_op("chmod", path, mode, True)

    @rule(path=paths, owner=st.sampled_from([0, 1000, NOBODY]), group=st.sampled_from([0, 1000, NOBODY]),
          follow=st.booleans())
    def chown(self, path, owner, group, follow):
        self.path_op("chown", path, owner, group, follow)

    @rule(path=paths, pointing_to=link_targets)
    def symlink(self, path, pointing_to):
        self.path_op("symlink", path, pointing_to)

    @rule(path=paths)
    def readlink(self, path):
        self.path_op("readlink", path)

    @rule(path=paths, follow=st.booleans())
    def stat(self, path, follow):
        self.path_op("stat", path, follow)

    @rule(path=paths)
    def listdir(self, path):
        self.path_op("listdir", path)

    # ---- xattrs ------------------------------------------------------------------------------------
    @rule(path=paths, name=xattr_names, value=xattr_values, flags=st.sampled_from([0, 1, 2]), follow=st.booleans())
    def setxattr(self, path, name, value, flags, follow):
        self.path_op("setxattr", path, name, value, flags, follow)

    @rule(path=paths, name=xattr_names, follow=st.booleans())
    def getxattr(self, path, name, follow):
        self.path_op("getxattr", path, name, follow)

    @rule(path=paths, name=xattr_names, follow=st.booleans())
    def removexattr(self, path, name, follow):
        self.path_op("removexattr", path, name, follow)

    @rule(path=paths, follow=st.booleans())
    def listxattr(self, path, follow):
        self.path_op("listxattr", path, follow)

    # ---- open files --------------------------------------------------------------------------------
    @rule(slot=slots, path=paths, flags=open_flags, mode=mode_choices(0o644, 0o600, 0o444, 0o4755))
    def open(self, slot, path, flags, mode):
        self.same(f"open({path!r}, {flags}) into slot {slot}", self.twin.call("open", slot, path, flag_bits(flags), mode))

    @precondition(has_open_files)
    @rule(data=st.data())
    def close(self, data):
        slot = self.open_slot(data)
        self.same(f"close slot {slot}", self.twin.call("close", slot))

    @precondition(has_open_files)
    @rule(data=st.data(), offset=offsets, buf=payloads)
    def pwrite(self, data, offset, buf):
        self.fd_op(self.open_slot(data), "pwrite", offset, buf)

    @precondition(has_open_files)
    @rule(data=st.data(), buf=payloads)
    def write(self, data, buf):
        self.fd_op(self.open_slot(data), "write", buf)

    @precondition(has_open_files)
    @rule(data=st.data(), offset=offsets, size=read_sizes)
    def pread(self, data, offset, size):
        self.fd_op(self.open_slot(data), "pread", offset, size)

    @precondition(has_open_files)
    @rule(data=st.data(), size=read_sizes)
    def read(self, data, size):
        self.fd_op(self.open_slot(data), "read", size)

    @precondition(has_open_files)
    @rule(data=st.data(), offset=st.integers(-10, 5 * MiB), whence=st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END]))
    def lseek(self, data, offset, whence):
        self.fd_op(self.open_slot(data), "lseek", offset, whence)

    @precondition(has_open_files)
    @rule(data=st.data(), size=sizes)
    def ftruncate(self, data, size):
        self.fd_op(self.open_slot(data), "ftruncate", size)

    @precondition(has_open_files)
    @rule(data=st.data())
    def fsync(self, data):
        self.fd_op(self.open_slot(data), "fsync")

    @precondition(has_open_files)
    @rule(data=st.data(), mode=modes)
    def fchmod(self, data, mode):
        self.fd_op(self.open_slot(data), "fchmod", mode)

    # ---- after every step --------------------------------------------------------------------------
    @invariant()
    def trees_match(self):
        fs, ref, fds = self.twin.call("snapshot")
        diff = differences(fs, ref)
        assert not diff, "the trees differ:\n  " + "\n  ".join(diff) + self.twin.story()
        for slot, (a, b) in fds.items():
            assert a == b, f"fstat of slot {slot}: chunkfs {a!r} != local {b!r}" + self.twin.story()

    def teardown(self):
        self.twin.call("reset")


def model_class(twin: Twin) -> type[PosixModel]:
    return type("Model", (PosixModel,), {"twin": twin})


# ---- the tests ------------------------------------------------------------------------------------
@contextmanager
def reference_root(parent: str) -> Iterator[str]:
    """A new local directory for the reference tree, on a filesystem with user xattrs: under
    `parent` if that has them, else on a tmpfs mounted for the test (root only)."""
    probe = tempfile.mkdtemp(prefix="chunkfs-model-", dir=parent)
    if supports_user_xattrs(probe) or os.geteuid() != 0:
        try:
            yield probe
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        return
    os.rmdir(probe)
    tmpfs = tempfile.mkdtemp(prefix="chunkfs-model-tmpfs-", dir=parent)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "chunkfs-model", tmpfs], check=True)
    try:
        os.mkdir(os.path.join(tmpfs, "local"))
        yield os.path.join(tmpfs, "local")
    finally:
        subprocess.run(["umount", "-l", tmpfs], check=False)
        os.rmdir(tmpfs)


@pytest.fixture(params=["root", "nobody"])
def twin(cluster, tmp_path, request):
    """A worker for a fresh chunkfs directory and a fresh local one, run as root or as `nobody`.
    `nobody` starts in its chunkfs directory (the mount's parents are root's) and keeps its
    local tree in a new directory under the system temp dir (root's under pytest's)."""
    fs_root = tempfile.mkdtemp(prefix="model-", dir=cluster.mnt)
    if request.param == "root":
        parent, python, user, cwd = str(tmp_path), sys.executable, None, None
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to switch to nobody")
        python = python_for(NOBODY)
        if python is None:
            pytest.skip("no python3 that nobody may run")
        parent, user, cwd = tempfile.gettempdir(), NOBODY, fs_root
    with reference_root(parent) as ref_root:
        if not supports_user_xattrs(ref_root):
            pytest.skip(f"{ref_root} has no user xattrs to compare with, and a tmpfs for it needs root")
        if user is not None:
            for root in (fs_root, ref_root):
                os.chown(root, NOBODY, NOBODY)
        for root in (fs_root, ref_root):
            os.chmod(root, 0o755)
        worker = Twin("." if user else fs_root, ref_root, python, user=user, cwd=cwd)
        try:
            yield worker
        finally:
            worker.close()


@pytest.mark.timeout(3600)  # for the long variant; the short run takes well under a minute
@pytest.mark.parametrize("profile", [SHORT, pytest.param(LONG, marks=pytest.mark.long)], ids=["short", "long"])
def test_chunkfs_matches_a_local_filesystem(twin, profile, request, long_budget):
    if request.config.getoption("--hypothesis-seed") is not None:  # derandomize would ignore it
        profile = settings(profile, derandomize=False)
        long_budget = LongBudget(None)  # a replay: one run, as the seed was drawn for (every batch would repeat it)

    def sequences(count: int) -> None:
        run_state_machine_as_test(model_class(twin), settings=settings(profile, max_examples=count))

    long_budget.run(profile.max_examples, LONG_BATCH, sequences, f"sequences of up to {profile.stateful_step_count} steps")


def test_differences_found_before_stay_fixed(twin):
    """The shortest sequences that once told chunkfs from a local filesystem."""
    state = model_class(twin)()
    # a directory made inside a setgid directory inherits the setgid bit (and the group)
    state.start_from(tree={"a": (0o2775, {"a": (0o755, {})})}, offset=0, data=b"x", pointing_to="a", opened=[])
    state.trees_match()
    # open(O_TRUNC) by a user without CAP_FSETID drops setuid, as truncate(2) does
    state.open(slot=0, path="d", flags="O_RDWR|O_CREAT|O_EXCL", mode=0o4755)
    state.open(slot=1, path="d", flags="O_RDONLY|O_TRUNC", mode=0o644)
    state.trees_match()
    # attributes outside the user, trusted and security namespaces are refused
    state.setxattr(path="d", name="foo.bar", value=b"v", flags=0, follow=True)
    state.trees_match()
    state.teardown()


def test_reopening_right_after_a_close_keeps_the_new_writes(cluster):
    """close() does not wait for FUSE's RELEASE: an open racing the release of the previous
    handle once got an OpenFile the release had just dropped, and its writes were invisible
    to stat and to other opens until it was closed."""
    path = cluster.mnt / "reopened"
    path.write_bytes(b"hello")
    for _ in range(100):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 10)
        os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_TRUNC)
        try:
            os.write(fd, b"xy")
            assert os.stat(path).st_size == 2
            assert path.read_bytes() == b"xy"
        finally:
            os.close(fd)


def test_a_rewound_directory_handle_lists_the_directory_as_it_is_now(cluster):
    """rewinddir() must show entries made since the handle was opened (os.listdir(fd) rewinds)."""
    (cluster.mnt / "rewound").mkdir()
    fd = os.open(cluster.mnt / "rewound", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(fd) == []
        (cluster.mnt / "rewound" / "new").write_bytes(b"")
        assert os.listdir(fd) == ["new"]
    finally:
        os.close(fd)
