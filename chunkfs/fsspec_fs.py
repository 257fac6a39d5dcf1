"""chunkfs as an fsspec filesystem: `chunkfs://HOST:PORT/path` for pandas, pyarrow, dask and
everything else that takes fsspec URLs, with no mount: a door on `chunkfs.client`.

    pandas.read_csv("chunkfs://127.0.0.1:9520/data/table.csv")
    fsspec.open("chunkfs://10.0.0.5:9520/x.bin", "wb", secret_file="/etc/chunkfs/secret")

It is registered for the protocol `chunkfs` through the `fsspec.specs` entry point. The cluster
secret is read from the storage option `secret_file`, else `$CHUNKFS_SECRET_FILE`, else
`./.chunkfs/secret` (a `chunkfs up` cluster here), else `/etc/chunkfs/secret`.

It is the synchronous `AbstractFileSystem` on the client's synchronous face: the client core
runs on trio, and fsspec's async base class wants asyncio. Files are fsspec buffered files
whose reads and writes go to one client file each; a written file is whole on the cluster when
`close()` returns (the client's durability). Errors are the client's `OSError`s with errno.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem  # type: ignore[import-untyped]
from fsspec.utils import stringify_path  # type: ignore[import-untyped]

from chunkfs import CHUNK_SIZE, DEFAULT_METASERVER_PORT

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_METASERVER_PORT}"
SECRET_ENV = "CHUNKFS_SECRET_FILE"
SECRET_FILES = (Path(".chunkfs/secret"), Path("/etc/chunkfs/secret"))


def secret_file_for(given: str | os.PathLike[str] | None) -> str:
    """Where the cluster secret is: the given file, $CHUNKFS_SECRET_FILE, then the first of
    SECRET_FILES that exists (the last one if none does, so the error names it)."""
    if given:
        return os.fspath(given)
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    for candidate in SECRET_FILES:
        if candidate.exists():
            return str(candidate.absolute())
    return str(SECRET_FILES[-1])


class ChunkfsFileSystem(AbstractFileSystem):
    """One cluster, one client connection (fsspec keeps one instance per address and options)."""

    protocol = "chunkfs"
    root_marker = "/"
    blocksize = CHUNK_SIZE

    def __init__(self, address: str | None = None, secret_file: str | None = None, goal: int | None = None,
                 retry_s: float = 15.0, auto_mkdir: bool = True, **kwargs: Any) -> None:
        """`auto_mkdir`: a file written makes its missing parent directories (as object stores
        and fsspec's local files with auto_mkdir=True behave, which data tools expect)."""
        super().__init__(**kwargs)
        from chunkfs import client

        self.address = address or DEFAULT_ADDRESS
        self.auto_mkdir = auto_mkdir
        self.client = client.connect(self.address, secret_file=secret_file_for(secret_file), goal=goal,
                                     retry_s=retry_s)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """`chunkfs://HOST:PORT/a/b` and `/a/b` are both the cluster path `/a/b`."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith("chunkfs://"):
            rest = path[len("chunkfs://"):]
            path = rest[rest.find("/"):] if "/" in rest else "/"
        return "/" + path.strip("/") if path.strip("/") else "/"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("chunkfs://"):
            address = path[len("chunkfs://"):].split("/", 1)[0]
            if address:
                return {"address": address}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return name if name.startswith("chunkfs://") else f"chunkfs://{self.address}{self._strip_protocol(name)}"

    # -- what is there

    def _details(self, path: str, st: os.stat_result) -> dict[str, Any]:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        details = {"name": path, "size": st.st_size, "type": kind, "mode": st.st_mode, "uid": st.st_uid,
                   "gid": st.st_gid, "nlink": st.st_nlink, "mtime": st.st_mtime, "ctime": st.st_ctime,
                   "ino": st.st_ino, "islink": False}
        if stat.S_ISLNK(st.st_mode):
            details["islink"] = True
            details["destination"] = self.client.readlink(path)
            try:  # what a link points at decides what it is, as for the local filesystem
                target = self.client.stat(path)
                details.update(type="directory" if stat.S_ISDIR(target.st_mode) else "file", size=target.st_size)
            except OSError:
                pass
        return details

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._details(path, self.client.lstat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        st = self.client.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            entries = [self._details(path, st)]
        else:
            entries = [self._details(e.path, e.stat()) for e in self.client.scandir(path)]
            entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def created(self, path: str) -> datetime.datetime:
        """chunkfs keeps no birth time: the last change of the inode (as fsspec's local files)."""
        return datetime.datetime.fromtimestamp(self.info(path)["ctime"], tz=datetime.UTC)

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    # -- changing the namespace

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.client.makedirs(path, exist_ok=True)
        else:
            self.client.mkdir(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.client.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.client.rmdir(self._strip_protocol(path))

    def rm_file(self, path: str) -> None:
        self.client.remove(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.isdir(path):
            self.client.rmdir(path)
        else:
            self.client.remove(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Files, and with `recursive` directories and all below them (deepest first)."""
        for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            self._rm(p)
        self.invalidate_cache()

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        """One path to a name that does not name a directory: one atomic rename; anything else
        (lists, globs, into a directory) as fsspec does it, copy then remove."""
        if isinstance(path1, str) and isinstance(path2, str) and not self._is_glob(path1) \
                and not path2.endswith("/") and not self.isdir(path2):
            self.client.rename(self._strip_protocol(path1), self._strip_protocol(path2))
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    @staticmethod
    def _is_glob(path: str) -> bool:
        return any(c in path for c in "*?[")

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.exists(path):
            self.make_parent(path)
            self.client.open(path, "wb").close()
        else:
            self.client.utime(path)

    # -- data

    def make_parent(self, path: str) -> None:
        """Before a file is written: its parent directories, with `auto_mkdir`."""
        if self.auto_mkdir:
            self.client.makedirs(self._parent(path), exist_ok=True)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> ChunkfsFile:
        return ChunkfsFile(self, self._strip_protocol(path), mode, block_size=block_size or self.blocksize,
                           autocommit=autocommit, cache_options=cache_options, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        self.make_parent(path2)
        with self.client.open(path1, "rb") as source, self.client.open(path2, "wb") as target:
            while data := source.read(self.blocksize):
                target.write(data)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        """One local file onto the cluster, whole or not at all under `rpath` (the client writes
        a temporary name and renames it)."""
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        self.make_parent(rpath)
        if callback is not None:
            callback.set_size(os.path.getsize(lpath))
        self.client.put_file(os.fspath(lpath), rpath, callback.relative_update if callback else None,
                             exclusive=mode == "create")

    def get_file(self, rpath: str, lpath: Any, callback: Any = None, outfile: Any = None,
                 **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        if outfile is not None or not isinstance(lpath, (str, os.PathLike)):
            super().get_file(rpath, lpath, outfile=outfile, **({"callback": callback} if callback else {}))
            return
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
        if callback is not None:
            callback.set_size(self.size(rpath))
        self.client.get_file(rpath, os.fspath(lpath), callback.relative_update if callback else None)


class ChunkfsFile(AbstractBufferedFile):
    """fsspec's buffered file over one client file: reads fetch ranges of an open client file,
    writes go to a client file opened at the first flush. With `autocommit=False` (fsspec
    transactions) the data is written under a temporary name and `commit()` renames it."""

    fs: ChunkfsFileSystem

    def __init__(self, fs: ChunkfsFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        self._client_file: Any = None
        super().__init__(fs, path, mode, **kwargs)
        self._written_path = path if self.autocommit else posixpath.join(
            posixpath.dirname(path), f".{posixpath.basename(path)}.fsspec-{os.urandom(4).hex()}")
        if self.writable():  # opened now, so "xb" on an existing file fails at open, as open() does
            fs.make_parent(path)
            try:
                self._client_file = self.fs.client.open(self._written_path, self.mode)
            except BaseException:
                self.closed = True
                raise

    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._client_file is None:
            self._client_file = self.fs.client.open(self.path, "rb")
        self._client_file.seek(start)
        pieces, wanted = [], end - start
        while wanted > 0:  # a raw file may return less than asked before the end
            piece = self._client_file.read(wanted)
            if not piece:
                break
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)

    def _initiate_upload(self) -> None:
        """The client file is already open (see __init__)."""

    def _upload_chunk(self, final: bool = False) -> bool:
        self._client_file.write(self.buffer.getvalue())
        if final:
            self._client_file.close()
            self._client_file = None
        return True

    def commit(self) -> None:
        if self._written_path != self.path:
            self.fs.client.rename(self._written_path, self.path)

    def discard(self) -> None:
        if self._written_path != self.path:
            self.fs.client.remove(self._written_path)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._client_file is not None:
                self._client_file.close()
                self._client_file = None
