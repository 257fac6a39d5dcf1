"""Directory quotas, as a user meets them: `chunkfs quota` on a real cluster, EDQUOT from the mount
and the API at the hard limit, usage that follows renames, unlinks, truncates and overwrites, and
a property-based run against a model (tests/storage_model.py) of quotas and the trash (removes,
restores, purges), with fsck's recount of the quotas after every step."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from chunkfs import auth
from chunkfs.client import connect
from chunkfs.daemons import unmount
from chunkfs.errors import FsError
from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp
from chunkfs.protocol.meta_client import MetaClient
from storage_model import MDir, MFile, QuotaModel
from conftest import _cluster, chunkfs, wait_until

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """This module's cluster keeps removed files in the trash, as `chunkfs up` does by default
    (the model checks the trash with the quotas)."""
    yield from _cluster(tmp_path_factory, up_options=("--trash-time-s", "86400"))


def meta(cluster, call):
    """`call(MetaClient)` against the cluster's metaserver; its FsError passes through."""
    secret = auth.load_secret(cluster.secret_file)

    async def run():
        http = SignedHttp(secret, retry_s=5, trio_native=True)
        try:
            return await call(MetaClient(http, cluster.metaserver))
        finally:
            await http.aclose()

    return trio.run(run)


def quota_get(cluster, path: Path) -> dict:
    result = chunkfs("quota", "get", path, "--json", check=False)
    assert result.returncode in (0, 2), result.stderr
    return json.loads(result.stdout)[0]


@pytest.fixture
def home(cluster, request):
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=cluster.mnt))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def edquot(action) -> None:
    with pytest.raises(OSError) as caught:
        action()
    assert caught.value.errno == errno.EDQUOT, caught.value


def write(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def test_hard_limits_refuse_growth_and_usage_follows_every_change(cluster, home):
    q = home / "q"
    q.mkdir()
    (home / "outside").mkdir()
    chunkfs("quota", "set", q, "--bytes", "100k", "--inodes", "4", "--soft-bytes", "50k")
    write(q / "a", b"x" * 40_000)
    assert quota_get(cluster, q)["used_bytes"] == 40_000
    edquot(lambda: write(q / "b", b"y" * 70_000))  # refused at close: nothing of it counts
    if (q / "b").exists():  # its create went before its data (the directory was not leased)
        assert (q / "b").stat().st_size == 0
        os.unlink(q / "b")
    write(q / "a", b"z" * 90_000)  # an overwrite counts the new size only
    info = quota_get(cluster, q)
    assert (info["used_bytes"], info["over_soft"]) == (90_000, ["bytes"])
    assert chunkfs("quota", "get", q, check=False).returncode == 2  # past the soft limit: a warning
    edquot(lambda: write(q / "a", b"z" * 20_000, "ab"))
    os.truncate(q / "a", 10_000)
    assert quota_get(cluster, q)["used_bytes"] == 10_000
    os.rename(q / "a", home / "outside" / "a")  # moved out: charged there no more
    assert quota_get(cluster, q)["used_bytes"] == 0
    os.truncate(home / "outside" / "a", 200_000)
    edquot(lambda: os.rename(home / "outside" / "a", q / "a"))  # moving in is growth too
    os.truncate(home / "outside" / "a", 10_000)
    os.rename(home / "outside" / "a", q / "a")
    for name in ("d1", "d2", "d3"):
        (q / name).mkdir()
    assert quota_get(cluster, q)["used_inodes"] == 4
    edquot(lambda: (q / "d4").mkdir())
    edquot(lambda: write(q / "d1" / "f", b""))
    os.unlink(q / "a")
    (q / "d1" / "f").write_bytes(b"ok")
    info = quota_get(cluster, q)
    assert (info["used_bytes"], info["used_inodes"]) == (2, 4)
    assert json.loads(chunkfs("fsck", "--dir", cluster.dir, "--json", check=False).stdout)["quotas_wrong"] == []


def test_a_write_past_the_limit_fails_at_the_write(cluster, home):
    """dd stops at the quota with "Disk quota exceeded", not only at close."""
    q = home / "q"
    q.mkdir()
    chunkfs("quota", "set", q, "--bytes", "12M")
    dd = subprocess.run(["dd", "if=/dev/zero", f"of={q / 'big'}", "bs=1M", "count=24"], capture_output=True, text=True)
    assert dd.returncode != 0
    assert "Disk quota exceeded" in dd.stderr, dd.stderr
    assert "error writing" in dd.stderr, dd.stderr
    assert (q / "big").stat().st_size <= 12 * MiB
    assert quota_get(cluster, q)["used_bytes"] == (q / "big").stat().st_size


def test_the_api_gets_edquot_too(cluster, home):
    q = home / "q"
    q.mkdir()
    chunkfs("quota", "set", q, "--bytes", "10k")
    inside = "/" + str(q.relative_to(cluster.mnt))
    with connect(cluster.metaserver, secret_file=cluster.secret_file, retry_s=5) as fs:
        with fs.open(f"{inside}/small", "wb") as f:
            f.write(b"x" * 5000)

        def too_big():
            with fs.open(f"{inside}/big", "wb") as f:
                f.write(b"x" * 6000)

        edquot(too_big)


def test_bad_quotas_are_refused_and_one_below_usage_is_taken(cluster, home):
    q = home / "q"
    q.mkdir()
    (q / "f").write_bytes(b"x" * 5000)
    assert chunkfs("quota", "set", q, "--bytes", "-5", check=False).returncode == 2  # click: bad value
    assert chunkfs("quota", "set", q, "--bytes", "99999999999E", check=False).returncode == 2
    refused = chunkfs("quota", "set", q, "--bytes", "1k", "--soft-bytes", "2k", check=False)
    assert refused.returncode == 1 and "soft limit" in refused.stderr
    assert chunkfs("quota", "set", q / "f", "--bytes", "1k", check=False).returncode == 1
    assert chunkfs("quota", "set", q, check=False).returncode == 1  # no limit given
    chunkfs("quota", "set", q, "--bytes", "1k")  # below the 5000 bytes stored: taken
    edquot(lambda: write(q / "f", b"x" * 6000, "r+b"))  # growing in place: refused, the file as it was
    assert (q / "f").stat().st_size == 5000
    os.truncate(q / "f", 4000)  # shrinking is always allowed
    edquot(lambda: os.truncate(q / "f", 4500))
    assert quota_get(cluster, q)["used_bytes"] == 4000
    listed = json.loads(chunkfs("quota", "list", "--dir", cluster.dir, "--json", check=False).stdout)
    assert any(item["path"].endswith(f"{home.name}/q") for item in listed)
    chunkfs("quota", "remove", q)
    write(q / "f", b"x" * 6000)
    assert chunkfs("quota", "get", q, check=False).returncode == 1


def test_df_on_a_mount_of_a_directory_with_a_quota_shows_the_quota(cluster, home, tmp_path):
    q = home / "q"
    q.mkdir()
    (q / "f").write_bytes(b"x" * MiB)
    chunkfs("quota", "set", q, "--bytes", "64M")
    spec = f"{cluster.metaserver}:/{q.relative_to(cluster.mnt)}"
    target = tmp_path / "sub"
    target.mkdir()
    secret = cluster.secret_file
    chunkfs("mount", spec, target, "--secret-file", secret, "-o", f"cache_dir={tmp_path}/sub-cache")
    try:
        vfs = os.statvfs(target)
        assert vfs.f_blocks * vfs.f_frsize == 64 * MiB
        assert vfs.f_bavail * vfs.f_frsize == 63 * MiB
    finally:
        unmount(target)


def test_rmdir_of_a_quota_directory_drops_its_quota(cluster, home):
    q = home / "q"
    q.mkdir()
    chunkfs("quota", "set", q, "--inodes", "10")
    ino = q.stat().st_ino
    q.rmdir()
    with pytest.raises(FsError) as gone:
        meta(cluster, lambda m: m.quota_get(ino))
    assert gone.value.errno == errno.ENOENT
    assert all(item["ino"] != ino for item in meta(cluster, lambda m: m.quota_list()))


# ---- the model ------------------------------------------------------------------------------------
NAMES = ("a", "b", "c")


class QuotaMachine(RuleBasedStateMachine):
    """Random namespace changes under directories with quotas, on the mount and on the model at
    once: the same ones refused with EDQUOT, the same usage, and fsck's recount agreeing."""

    cluster = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.top = Path(tempfile.mkdtemp(prefix="quota-model-", dir=self.cluster.mnt))
        self.model = QuotaModel()
        self.story: list[str] = []
        self.trashed: set[int] = set()  # every id this run put in the trash

    def real(self, path: str) -> Path:
        return self.top / path

    def run(self, what: str, refused: bool, action) -> None:
        self.story.append(f"{what}{' (refused)' if refused else ''}")
        try:
            action()
        except OSError as exc:
            assert exc.errno == errno.EDQUOT, f"{what}: {exc}\n" + "\n".join(self.story)
            assert refused, f"{what}: EDQUOT, where the model allows it\n" + "\n".join(self.story)
            return
        assert not refused, f"{what}: done, where the model says EDQUOT\n" + "\n".join(self.story)

    def pick(self, data, kind: str) -> str | None:
        """A path drawn from the model as it is now: "new" (a name in a directory, which may
        be taken), "file", "node" (anything but the top) or "dir" (the top too, as "")."""
        nodes = list(self.model.walk())
        if kind == "new":
            parent = data.draw(st.sampled_from(["", *(p for p, n in nodes if isinstance(n, MDir) and p.count("/") < 2)]))
            name = data.draw(st.sampled_from(NAMES))
            return f"{parent}/{name}" if parent else name
        choices = {"file": [p for p, n in nodes if isinstance(n, MFile)], "node": [p for p, _n in nodes],
                   "dir": ["", *(p for p, n in nodes if isinstance(n, MDir))]}[kind]
        return data.draw(st.sampled_from(choices)) if choices else None

    def new_place(self, path: str) -> MDir | None:
        parent, name = self.model.split(path)
        return parent if parent is not None and name not in parent.children else None

    @initialize(limit_bytes=st.sampled_from([2000, 9000]), limit_inodes=st.sampled_from([3, 6, 0]))
    def quota_on_top(self, limit_bytes, limit_inodes):
        """Every run starts under a quota, so that refusals are common."""
        self.model.root.quota = (limit_bytes, limit_inodes)
        self.story.append(f"quota on the top: {limit_bytes} bytes {limit_inodes} inodes")
        req = r.QuotaSetReq(ino=self.top.stat().st_ino, bytes_hard=limit_bytes, inodes_hard=limit_inodes)
        meta(self.cluster, lambda m: m.quota_set(req))

    @rule(data=st.data())
    def mkdir(self, data):
        path = self.pick(data, "new")
        parent = self.new_place(path)
        if parent is not None:
            self.run(f"mkdir {path}", self.model.mkdir(parent, path.rpartition("/")[2]),
                     lambda: os.mkdir(self.real(path)))

    @rule(data=st.data())
    def create(self, data):
        path = self.pick(data, "new")
        parent = self.new_place(path)
        if parent is not None:
            def create_file():
                os.close(os.open(self.real(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            self.run(f"create {path}", self.model.create(parent, path.rpartition("/")[2]), create_file)

    @rule(data=st.data(), offset=st.sampled_from([0, 1000, 4000]), length=st.sampled_from([1, 1500, 5000]))
    def write(self, data, offset, length):
        path = self.pick(data, "file")
        if path is None:
            return
        f = self.model.lookup(path)
        if isinstance(f, MFile):
            def write_file():
                fd = os.open(self.real(path), os.O_WRONLY)
                try:
                    os.pwrite(fd, b"w" * length, offset)
                finally:
                    os.close(fd)
            self.run(f"write {path} {offset}+{length}", self.model.resize(f, max(f.size, offset + length)), write_file)

    @rule(data=st.data(), size=st.sampled_from([0, 500, 6000]))
    def truncate(self, data, size):
        path = self.pick(data, "file")
        if path is None:
            return
        f = self.model.lookup(path)
        if isinstance(f, MFile):
            self.run(f"truncate {path} {size}", self.model.resize(f, size), lambda: os.truncate(self.real(path), size))

    @rule(data=st.data())
    def remove(self, data):
        path = self.pick(data, "node")
        if path is None:
            return
        parent, name = self.model.split(path)
        node = parent.children.get(name) if parent is not None else None
        if isinstance(node, MFile):
            ino = self.real(path).stat().st_ino
            self.run(f"unlink {path}", self.model.remove(parent, name, ino), lambda: os.unlink(self.real(path)))
        elif isinstance(node, MDir) and not node.children:
            self.run(f"rmdir {path}", self.model.remove(parent, name, 0), lambda: os.rmdir(self.real(path)))

    @rule(data=st.data())
    def restore(self, data):
        if not self.model.trash:
            return
        ino = data.draw(st.sampled_from(sorted(self.model.trash)))
        parent, name, _f = self.model.trash[ino]
        expected = self.model.restore(ino)
        self.story.append(f"restore {ino} ({name}): {expected}")
        try:
            restored = meta(self.cluster, lambda m: m.trash_restore(r.TrashRestoreReq(id=ino)))
        except FsError as exc:
            assert exc.name == expected, f"restore {ino}: {exc.name}\n" + "\n".join(self.story)
            return
        assert expected == "ok", f"restore {ino}: done\n" + "\n".join(self.story)
        path = self.top / self.model.path_of(parent) / name
        wait_until(lambda: path.exists(), 10, f"{path} seen again by the mount")
        assert path.stat().st_ino == restored.attr.ino == ino

    @rule(data=st.data())
    def purge(self, data):
        if self.model.trash:
            ino = data.draw(st.sampled_from(sorted(self.model.trash)))
            self.story.append(f"purge {ino}")
            del self.model.trash[ino]
            assert meta(self.cluster, lambda m: m.trash_purge(r.TrashPurgeReq(ids=[ino]))) == 1

    @rule(data=st.data())
    def rename(self, data):
        src, dst = self.pick(data, "node"), self.pick(data, "new")
        if src is None:
            return
        src_parent, src_name = self.model.split(src)
        dst_parent, dst_name = self.model.split(dst)
        node = src_parent.children.get(src_name) if src_parent is not None else None
        if node is None or dst_parent is None or dst == src or dst.startswith(src + "/"):
            return
        existing = dst_parent.children.get(dst_name)
        if existing is not None and (isinstance(existing, MDir) != isinstance(node, MDir)
                                     or (isinstance(existing, MDir) and existing.children)):
            return
        dst_ino = self.real(dst).stat().st_ino if existing is not None else 0
        self.run(f"rename {src} {dst}", self.model.rename(src_parent, src_name, dst_parent, dst_name, dst_ino),
                 lambda: os.rename(self.real(src), self.real(dst)))

    @rule(data=st.data())
    def link(self, data):
        src, dst = self.pick(data, "file"), self.pick(data, "new")
        if src is None:
            return
        f = self.model.lookup(src)
        parent = self.new_place(dst)
        if isinstance(f, MFile) and parent is not None:
            self.run(f"link {src} {dst}", self.model.link(f, parent, dst.rpartition("/")[2]),
                     lambda: os.link(self.real(src), self.real(dst)))

    @rule(data=st.data())
    def snapshot(self, data):
        src, dst = self.pick(data, "node"), self.pick(data, "new")
        if src is None:
            return
        node = self.model.lookup(src)
        parent = self.new_place(dst)
        if node is None or parent is None or dst.startswith(src + "/"):
            return
        expected = self.model.snapshot(node, parent, dst.rpartition("/")[2])
        ino, parent_ino = self.real(src).stat().st_ino, self.real(dst).parent.stat().st_ino
        name = dst.rpartition("/")[2].encode()
        self.story.append(f"snapshot {src} {dst}{' (refused)' if expected else ''}")
        try:
            meta(self.cluster, lambda m: m.snapshot(ino, parent_ino, name))
        except FsError as exc:
            assert exc.errno == errno.EDQUOT and expected, f"snapshot {src} {dst}: {exc}\n" + "\n".join(self.story)
            return
        assert not expected, f"snapshot {src} {dst}: done, where the model says EDQUOT\n" + "\n".join(self.story)
        wait_until(lambda: self.real(dst).exists(), 10, f"the snapshot {dst} seen by the mount")

    @rule(data=st.data(), limit_bytes=st.sampled_from([0, 1000, 5000]), limit_inodes=st.sampled_from([0, 2, 4]))
    def set_quota(self, data, limit_bytes, limit_inodes):
        path = self.pick(data, "dir")
        d = self.model.lookup(path)
        if isinstance(d, MDir) and (limit_bytes or limit_inodes):
            self.story.append(f"quota {path} {limit_bytes} bytes {limit_inodes} inodes")
            d.quota = (limit_bytes, limit_inodes)
            req = r.QuotaSetReq(ino=self.real(path).stat().st_ino, bytes_hard=limit_bytes, inodes_hard=limit_inodes)
            meta(self.cluster, lambda m: m.quota_set(req))

    @rule(data=st.data())
    def remove_quota(self, data):
        path = self.pick(data, "dir")
        d = self.model.lookup(path)
        if isinstance(d, MDir) and d.quota is not None:
            self.story.append(f"no quota on {path}")
            d.quota = None
            ino = self.real(path).stat().st_ino
            meta(self.cluster, lambda m: m.quota_remove(ino))

    @invariant()
    def same_tree_and_usage(self):
        story = "\n".join(self.story)
        for path, node in self.model.walk():
            real = self.real(path)
            if isinstance(node, MDir):
                assert sorted(os.listdir(real)) == sorted(node.children), f"listing of {path}\n{story}"
            else:
                assert real.stat().st_size == node.size, f"size of {path}\n{story}"
        assert sorted(os.listdir(self.top)) == sorted(self.model.root.children), story

        async def quotas_and_check(m):
            return await m.quota_list(), await m.quota_check(), await m.sharing_check()

        async def in_trash(m):
            items, after = [], 0
            while page := await m.trash_list(after, 1000):
                items += page
                after = page[-1].id
            return {i.id for i in items}

        listed, wrong, sharing = meta(self.cluster, quotas_and_check)
        assert wrong == [], f"fsck's recount differs: {wrong}\n{story}"
        assert sharing == [], f"fsck finds the shared chunks' bookkeeping wrong: {sharing}\n{story}"
        self.trashed |= set(self.model.trash)
        assert meta(self.cluster, in_trash) & self.trashed == set(self.model.trash), f"the trash\n{story}"
        by_ino = {q.ino: q for q in listed}
        for path, d in self.model.quota_dirs():
            q = by_ino[self.real(path).stat().st_ino]
            assert (q.used_bytes, q.used_inodes) == self.model.usage(d), f"usage of {path}\n{story}"

    def teardown(self):
        shutil.rmtree(self.top, ignore_errors=True)


# the suite's run (~1 min here); the long variant (make test-long) runs 200 random ones, in runs
# of the suite's size under make test-long's budget (tests/long_budget.py)
MODEL_RUN = settings(max_examples=12, stateful_step_count=40, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck), derandomize=True)
LONG_MODEL_RUN = settings(MODEL_RUN, max_examples=200, derandomize=False)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("profile", [MODEL_RUN, pytest.param(LONG_MODEL_RUN, marks=pytest.mark.long)],
                         ids=["short", "long"])
def test_quotas_match_a_model(cluster, profile, long_budget):
    def runs(count: int) -> None:
        run_state_machine_as_test(type("Machine", (QuotaMachine,), {"cluster": cluster}),
                                  settings=settings(profile, max_examples=count))

    long_budget.run(profile.max_examples, MODEL_RUN.max_examples, runs, "quota model runs")
