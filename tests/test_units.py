"""Unit tests of pure logic: prefetch windows, request signing, configuration, mount options."""

import dataclasses
from pathlib import Path

import pytest

from chunkfs.checksum import BLOCK_SIZE, block_checksums, verify_blocks
from chunkfs.config import ConfigError, load, opt, parse_address
from chunkfs.mount.helper import OptionError, parse_options
from chunkfs.client.prefetch import floor_window, prefetch_window


def test_floor_follows_the_size_rule():
    assert [floor_window(n) for n in (1, 2, 3, 4, 5, 6, 7, 100)] == [1, 2, 3, 3, 3, 3, 4, 4]


def test_sequential_readers_grow_and_random_readers_get_nothing():
    assert prefetch_window(3, 0) == 3  # small files: all at once, however they are read
    assert prefetch_window(24, 0) == 0
    assert prefetch_window(24, 1) == 4
    assert prefetch_window(24, 2) == 8
    assert prefetch_window(256, 10) == 16
    assert prefetch_window(5, 1) == 3


def test_block_checksums_find_the_bad_block():
    data = bytearray(b"a" * (3 * BLOCK_SIZE))
    sums = block_checksums(data)
    assert verify_blocks(data, sums, 0) is None
    data[BLOCK_SIZE + 5] ^= 1
    assert verify_blocks(data, sums, 0) == 1


@dataclasses.dataclass
class Example:
    port: int = opt(1, "a port")
    name: str = opt("x", "a name")
    path: Path = opt(Path("/"), "a path")
    flag: bool = opt(False, "a flag")


def test_config_names_the_bad_option(tmp_path):
    with pytest.raises(ConfigError, match="option port"):
        load(Example, None, {"port": "eighty"})
    with pytest.raises(ConfigError, match="unknown option colour"):
        load(Example, None, {"colour": "red"})
    conf = tmp_path / "x.toml"
    conf.write_text('port = 7\nname = "y"\n')
    assert load(Example, conf, {"name": "z", "flag": "yes"}) == Example(7, "z", Path("/"), True)
    with pytest.raises(ConfigError):
        parse_address("host:99999")


def test_mount_options_ignore_fstab_words_and_refuse_unknown_ones():
    assert parse_options("defaults,_netdev,secret=/s,cache_mem_mb=64,allow_other") == {
        "secret_file": "/s", "cache_mem_mb": "64", "allow_other": "true"}
    with pytest.raises(OptionError, match="bogus"):
        parse_options("bogus=1")


def test_reply_log_answers_a_retry_and_forgets_it_after_keep_s(tmp_path):
    from chunkfs.metaserver.db import MetaDB
    from chunkfs.metaserver.replies import KEEP_S, REPLAYED, ReplyLog

    now = [1_000_000.0]
    db = MetaDB(tmp_path / "meta", map_size_bytes=1 << 24)
    replies = ReplyLog(db, clock=lambda: now[0])
    runs = []

    def mutate(txn, req):
        runs.append(req)
        return {"made": req}

    with db.env.begin(write=True) as txn:
        # a first attempt (X-Chunkfs-Attempt: 1) is stored without a look-up; its retry is looked up
        assert replies.once(mutate, "client", "rid", first_attempt=True)(txn, 1) == (b'{"made":1}', {"made": 1})
        now[0] += KEEP_S - 60
        assert replies.once(mutate, "client", "rid")(txn, 1) == (b'{"made":1}', REPLAYED)  # answered again
        assert replies.once(mutate, "other-client", "rid")(txn, 2)[1] == {"made": 2}  # ids are per client
        assert replies.once(mutate, "client", "rid", signer="Kother")(txn, 4)[1] == {"made": 4}  # and credential
        now[0] += 180
        assert replies.prune(txn) == 1
        assert replies.once(mutate, "client", "rid")(txn, 3)[1] == {"made": 3}
    assert runs == [1, 2, 4, 3]
    db.close()


def test_a_client_id_is_the_credential_s_that_used_it_first():
    import errno

    from chunkfs.auth import CLUSTER_ROLE
    from chunkfs.errors import FsError
    from chunkfs.metaserver.client_owners import ClientOwners

    now = [0.0]
    owners = ClientOwners(forget_s=100, clock=lambda: now[0])
    owners.admit("mount-1", "Kalice", "client")
    owners.admit("mount-1", "Kalice", "client")  # its own, again
    with pytest.raises(FsError) as err:
        owners.admit("mount-1", "Kmallory", "client")
    assert err.value.errno == errno.EPERM
    owners.admit("mount-1", "", CLUSTER_ROLE)  # the cluster secret may act under any id
    owners.admit("", "Kmallory", "client")  # no id: nothing to own
    now[0] += 150  # unused past forget_s: forgotten, free to take
    owners.admit("other", "Kbob", "client")
    owners.admit("mount-1", "Kmallory", "client")
    assert len(owners) == 2


def test_readme_lists_every_mount_option_as_chunkfs_mount_help_does():
    from chunkfs.mount.helper import options_markdown

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert options_markdown() in readme, "run .venv/bin/python scripts/update_readme_options.py"


def test_readme_module_map_lists_every_module_under_chunkfs():
    """The README's "How it works" map names every module, each under its package."""
    import re

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## How it works", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {"": set()}
    package = ""
    for line in block.splitlines()[2:]:
        heading = re.match(r"^  (\w+)/", line)
        if heading:
            package = heading.group(1)
        elif re.match(r"^  \S", line):
            package = ""
        listed.setdefault(package, set()).update(re.findall(r"\b(\w+)\.py\b", line))
    for path in sorted((root / "chunkfs").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        package = path.parent.relative_to(root / "chunkfs").as_posix().replace(".", "")
        assert path.stem in listed.get(package, set()), f"README's module map does not list chunkfs/{package}/{path.name}".replace("//", "/")


def test_importing_the_client_loads_no_fuse():
    """The client core and the Python API work where there is no FUSE: pyfuse3 is the mount's."""
    import subprocess
    import sys

    code = "import sys, chunkfs.client, chunkfs.client.core; print(sorted(m for m in sys.modules if 'fuse' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("address", ["\U0001f600:1", "a\x00b:1", "[::1:5"])
def test_an_address_that_is_none_is_a_value_error_of_the_httpx_transport(address):
    """What fsck and gc catch for a chunkserver registered with an address that is none (the
    route fuzzer registered one as an emoji, and fsck answered 500: httpx's InvalidURL is no
    ValueError)."""
    import trio

    from chunkfs.protocol.transport import HttpxTransport

    async def send(transport) -> None:
        try:
            await transport.send("GET", address, "/health", [("Host", address)], None)
        finally:
            await transport.aclose()

    with pytest.raises(ValueError, match="is not an address"):
        trio.run(send, HttpxTransport(5, 5, 1))


def test_an_api_error_names_the_files_path_never_the_data_written():
    """An OSError from a file's method names the file (its `name`), not the method's first
    argument: `write(b"...")` of 4 MiB once put those bytes in `filename`. A filesystem's
    method names the path it was given."""
    import errno

    import trio

    from chunkfs.client.os_errors import raises_os_errors
    from chunkfs.errors import FsError

    class File:
        name = "/dir/file"

        @raises_os_errors
        async def write(self, data: bytes) -> int:
            raise FsError(errno.ENOSPC, "no chunkserver has room")

    class Filesystem:
        @raises_os_errors
        async def remove(self, path: str) -> None:
            raise FsError(errno.ENOENT, "no such file")

    with pytest.raises(OSError) as written:
        trio.run(File().write, b"x" * 4096)
    assert written.value.errno == errno.ENOSPC and written.value.filename == "/dir/file"
    with pytest.raises(FileNotFoundError) as removed:
        trio.run(Filesystem().remove, "/dir/gone")
    assert removed.value.filename == "/dir/gone"
