"""The synchronous face of the Python API: `connect()` gives a `Filesystem` for scripts.

The trio core runs in one background thread that the Filesystem owns (`TrioThread`); each call
is handed to it and waited for. A KeyboardInterrupt (Ctrl-C) while a call waits cancels that
call in the core first (so `put_file` removes its half-written upload) and is then raised.
Ctrl-C reaches the waiting caller because the client's threads never take a signal: the
kernel hands a signal sent to the process to any thread that does not block it, and Python
runs the handler only in the main thread; one taken by the trio thread (seen with strace, more
often with dedup's hashing workers keeping the CPUs busy) left the main thread asleep in its
wait until the call ended: a 64 MiB put stored whole after Ctrl-C. `TrioThread` blocks them
in its thread (the workers it starts inherit that), and the caller waits in slices of WAKE_S,
so a signal some other thread of the program took is raised within that.
`close()` (or leaving the `with` block) commits nothing by itself: files still open are closed
(durably) first, then the connection ends and the thread with it.

What the hand-off costs: a `stat` answered from the metadata cache took ~190 us of CPU a call
here against ~7 us through the async face (2,000 calls each, a loaded 2-core machine, load ~12);
a no-op call ~100 us, and ~60 us since the caller waits on a plain lock (`_Call`, load 3-5).
So a script moving much data does well with large reads and writes (a chunk, 4 MiB, at a time)
and `put_file`/`get_file` (one call a file), and one making many small calls with the async face.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import io
import os
import logging
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import trio

from chunkfs.client.async_file import AsyncFile
from chunkfs.client.filesystem import AsyncFilesystem, DirEntry
from chunkfs.client.transfers import Progress
from chunkfs.client.paths import PathLike

T = TypeVar("T")
log = logging.getLogger(__name__)
WAKE_S = 0.2  # a caller waiting on the client thread checks this often for a signal another thread took
# faults are the faulting thread's own (and cannot usefully be blocked); every other signal is the main thread's
THREAD_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGTRAP,
                  signal.SIGSYS, signal.SIGKILL, signal.SIGSTOP}


class _Call:
    """One call handed to the trio thread: its outcome, and the scope that cancels it. The
    caller waits on a plain lock the call releases when it has its outcome: a concurrent.futures
    Future and `wait` cost ~100 us a hand-off here, this ~65 us (a no-op call, 10,000 times,
    alternated, load 3-5)."""

    __slots__ = ("_done", "error", "result", "scope")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()  # released once by the call, when `result` or `error` is set
        self.result: Any = None
        self.error: BaseException | None = None
        self.scope: trio.CancelScope | None = None

    def finished(self, timeout: float) -> bool:
        """Whether the call has its outcome, waiting up to `timeout` for it; once True, call no more."""
        return self._done.acquire(timeout=timeout)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.release()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class TrioThread:
    """A thread running trio with one AsyncFilesystem open, until `stop()`."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[AsyncFilesystem]]) -> None:
        self._opener = opener
        self._opened: concurrent.futures.Future[AsyncFilesystem] = concurrent.futures.Future()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped: trio.Event | None = None
        self._thread = threading.Thread(target=self._run_trio, name="chunkfs-client", daemon=True)
        self.files: weakref.WeakSet[File] = weakref.WeakSet()  # opened through this thread (see File's kept writes)

    def start(self) -> AsyncFilesystem:
        """Open the filesystem in the thread; its error (no such cluster, bad secret) is raised here."""
        self._thread.start()
        try:
            return self._opened.result()
        except BaseException:
            self._thread.join()
            raise

    def _run_trio(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - THREAD_SIGNALS)
        trio.run(self._main)

    async def _main(self) -> None:
        try:
            async with self._opener() as afs, trio.open_nursery() as nursery:
                self._token = trio.lowlevel.current_trio_token()
                self._nursery, self._stopped = nursery, trio.Event()
                self._opened.set_result(afs)
                await self._stopped.wait()  # then the calls still running finish (a close commits)
        except BaseException as exc:
            if not self._opened.done():
                self._opened.set_exception(exc)
                return
            raise

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)` in the trio thread; its result or exception here."""
        if self.in_client_thread():
            raise RuntimeError("a blocking chunkfs call from the client's own thread would wait for itself")
        if self._token is None or self._stopped is None or self._stopped.is_set():
            raise ValueError("the chunkfs filesystem is closed")
        call = _Call()
        try:
            self._token.run_sync_soon(self._start, call, fn, args)
        except trio.RunFinishedError:
            raise ValueError("the chunkfs filesystem is closed") from None
        finished = False
        try:
            while not finished:
                finished = call.finished(WAKE_S)
        except KeyboardInterrupt:
            if not finished:
                self._token.run_sync_soon(self._cancel, call)
                while not call.finished(WAKE_S):  # its clean-up is done before Ctrl-C goes on
                    pass
            raise
        result: T = call.outcome()
        return result

    def in_client_thread(self) -> bool:
        """Whether the caller runs in the trio thread (a finalizer the garbage collector ran there)."""
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `await fn(*args)` in the trio thread and return at once (from any thread, the
        garbage collector's too); its errors are logged."""
        if self._token is None or self._stopped is None or self._stopped.is_set():
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._start, _Call(), self._logged, (fn, *args))

    @staticmethod
    async def _logged(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            log.error("%s: %s", getattr(fn, "__qualname__", fn), exc)

    def _start(self, call: _Call, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run, call, fn, args)

    @staticmethod
    def _cancel(call: _Call) -> None:
        if call.scope is not None:
            call.scope.cancel()

    @staticmethod
    async def _run(call: _Call, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        with trio.CancelScope() as scope:  # cancelled by Ctrl-C in the caller (`_cancel`)
            call.scope = scope
            try:
                result = await fn(*args)
            except trio.Cancelled:
                call.finish(error=KeyboardInterrupt())
                raise
            except BaseException as exc:
                call.finish(error=exc)
            else:
                call.finish(result)

    def close_files(self) -> list[Exception]:
        """Close the files still open (with the writes they kept), each; their errors."""
        errors: list[Exception] = []
        if self.in_client_thread():
            return errors
        for file in list(self.files):
            try:
                file.close()
            except Exception as exc:
                errors.append(exc)
        return errors

    def finish(self) -> None:
        """At exit or when the Filesystem is dropped: close_files (errors logged), then stop."""
        for exc in self.close_files():
            log.error("closing a chunkfs file at exit: %s", exc)
        self.stop()

    def stop(self) -> None:
        token, stopped = self._token, self._stopped
        if token is not None and stopped is not None and not stopped.is_set():
            with contextlib.suppress(trio.RunFinishedError):  # ended already
                token.run_sync_soon(stopped.set)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()


WRITE_BUFFER = 256 << 10  # bytes of small writes a File keeps before handing them over in one call


class File(io.RawIOBase):
    """A chunkfs file for blocking code: a binary file object (readinto, read, write, seek, ...
    and a context manager). `flush()` and `close()` are durable, like fsync.

    Writes smaller than WRITE_BUFFER are kept here and handed to the client thread together,
    with the next call that needs them (a larger write, a read, seek, tell, truncate, flush,
    close, a lock), as Python's buffered files do: a hand-off costs 60-190 us, so a script writing
    a CSV line by line, or a small file in one write and a close, pays for one call instead of
    one per write (1,000 files of 4 KiB, `open("xb")`, one write, close: 2 hand-offs a file
    instead of 3). As with any buffered file, an error of a kept write (ENOSPC, EDQUOT) is
    raised by the call that hands it over, at the latest by flush() or close()."""

    def __init__(self, thread: TrioThread, afile: AsyncFile) -> None:
        super().__init__()
        self._thread, self._afile = thread, afile
        self._pending = bytearray()  # small writes not yet handed over
        self._closing = False  # a close (with the kept writes) is on its way in the client thread

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`fn(*args)` in the client thread, after the kept writes (in the same hand-off)."""
        if not self._pending:
            return self._thread.call(fn, *args)
        pending, self._pending = bytes(self._pending), bytearray()
        result: T = self._thread.call(self._after_pending, pending, fn, *args)
        return result

    async def _after_pending(self, pending: bytes, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            await self._afile.write(pending)
        except BaseException:
            if fn == self._afile.aclose:  # a close still closes, then says why the write failed
                await fn()
            raise
        return await fn(*args)

    @property
    def name(self) -> str:
        return self._afile.name

    @property
    def mode(self) -> str:
        return self._afile.mode

    @property
    def closed(self) -> bool:
        return self._afile.closed

    def readable(self) -> bool:
        return self._afile.readable()

    def writable(self) -> bool:
        return self._afile.writable()

    def seekable(self) -> bool:
        return self._afile.seekable()

    def tell(self) -> int:
        self._afile.seekable()
        if self._pending and self._afile.mode.startswith("a"):  # appended at the end, wherever that is now
            return self._call(self._afile.seek, 0, os.SEEK_CUR)
        return self._afile.tell() + len(self._pending)

    def read(self, size: int | None = -1) -> bytes:
        self._afile.readable()  # ValueError once closed, before any hand-off
        return self._call(self._afile.read, size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readline(self, size: int | None = -1) -> bytes:
        """One hand-off a line (io's readline would make one a byte); iteration uses it."""
        self._afile.readable()
        return self._call(self._afile.readline, size)

    def readinto(self, buffer: Any) -> int:
        self._afile.readable()
        return self._call(self._afile.readinto, buffer)

    def write(self, data: Any) -> int:
        if not self._afile.writable():  # ValueError once closed, as io
            raise io.UnsupportedOperation("File not open for writing")
        size = memoryview(data).nbytes
        if size + len(self._pending) <= WRITE_BUFFER:
            self._pending += data
            return size
        return self._call(self._afile.write, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._afile.seekable()
        return self._call(self._afile.seek, offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self._afile.writable()
        return self._call(self._afile.truncate, size)

    def flush(self) -> None:
        self._afile.seekable()  # ValueError once closed, as io
        self._call(self._afile.flush)

    def lock(self, exclusive: bool = True, *, blocking: bool = True, start: int = 0, length: int = 0) -> None:
        """See AsyncFile.lock: a byte-range lock held between every client, this file object's."""
        self._call(functools.partial(self._afile.lock, exclusive, blocking=blocking, start=start, length=length))

    def unlock(self, start: int = 0, length: int = 0) -> None:
        self._call(self._afile.unlock, start, length)

    def close(self) -> None:
        if not self._afile.closed and not self._closing:
            if self._thread.in_client_thread():  # closed by a finalizer in the client's thread: do not wait
                self._close_soon()
                return
            with contextlib.suppress(ValueError):  # the filesystem was closed first (and closed this file)
                self._call(self._afile.aclose)

    def __del__(self) -> None:
        """A file dropped without close() is closed (durably) as io's are, but in the client's
        thread, without waiting here: the garbage collector may run in any thread."""
        if not self._afile.closed:
            self._close_soon()

    def _close_soon(self) -> None:
        self._closing = True  # a later close() must not close it first, without the kept writes
        pending, self._pending = bytes(self._pending), bytearray()
        if pending:
            self._thread.call_soon(self._after_pending, pending, self._afile.aclose)
        else:
            self._thread.call_soon(self._afile.aclose)

    def __repr__(self) -> str:
        return f"<chunkfs File {self.name!r} mode={self.mode!r}{' closed' if self.closed else ''}>"


class Filesystem:
    """A connection to one cluster for blocking code; see `connect`. Methods as in `os`, by cluster path."""

    def __init__(self, thread: TrioThread, afs: AsyncFilesystem) -> None:
        self._thread, self._afs = thread, afs

    def open(self, path: PathLike, mode: str = "rb") -> File:
        file = File(self._thread, self._thread.call(self._afs.open, path, mode))
        self._thread.files.add(file)
        return file

    def stat(self, path: PathLike) -> os.stat_result:
        return self._thread.call(self._afs.stat, path)

    def lstat(self, path: PathLike) -> os.stat_result:
        return self._thread.call(self._afs.lstat, path)

    def scandir(self, path: PathLike = "/") -> Iterator[DirEntry]:
        return iter(self._thread.call(self._afs.scandir, path))

    def listdir(self, path: PathLike = "/") -> list[str]:
        return self._thread.call(self._afs.listdir, path)

    def walk(self, top: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like os.walk (top-down): the lists of names may be pruned to skip directories."""
        pending = [self._afs.canonical(top)]
        while pending:
            directory = pending.pop()
            try:
                entries = list(self.scandir(directory))
            except OSError:
                continue
            dirs = [e.name for e in entries if e.is_dir()]
            files = [e.name for e in entries if not e.is_dir()]
            yield directory, dirs, files
            pending.extend(reversed([f"{directory.rstrip('/')}/{d}" for d in dirs]))

    def exists(self, path: PathLike) -> bool:
        return self._thread.call(self._afs.exists, path)

    def mkdir(self, path: PathLike, mode: int = 0o777) -> None:
        self._thread.call(self._afs.mkdir, path, mode)

    def makedirs(self, path: PathLike, mode: int = 0o777, exist_ok: bool = False) -> None:
        self._thread.call(self._afs.makedirs, path, mode, exist_ok)

    def remove(self, path: PathLike) -> None:
        self._thread.call(self._afs.remove, path)

    unlink = remove

    def rmdir(self, path: PathLike) -> None:
        self._thread.call(self._afs.rmdir, path)

    def rename(self, src: PathLike, dst: PathLike) -> None:
        self._thread.call(self._afs.rename, src, dst)

    def symlink(self, target: PathLike, linkpath: PathLike) -> None:
        self._thread.call(self._afs.symlink, target, linkpath)

    def readlink(self, path: PathLike) -> str:
        return self._thread.call(self._afs.readlink, path)

    def chmod(self, path: PathLike, mode: int) -> None:
        self._thread.call(self._afs.chmod, path, mode)

    def chown(self, path: PathLike, uid: int, gid: int) -> None:
        self._thread.call(self._afs.chown, path, uid, gid)

    def utime(self, path: PathLike, times: tuple[float, float] | None = None, *,
              ns: tuple[int, int] | None = None) -> None:
        self._thread.call(lambda: self._afs.utime(path, times, ns=ns))

    def truncate(self, path: PathLike, size: int) -> None:
        self._thread.call(self._afs.truncate, path, size)

    def getxattr(self, path: PathLike, name: str | bytes) -> bytes:
        return self._thread.call(self._afs.getxattr, path, name)

    def setxattr(self, path: PathLike, name: str | bytes, value: bytes, flags: int = 0) -> None:
        self._thread.call(self._afs.setxattr, path, name, value, flags)

    def listxattr(self, path: PathLike) -> list[str]:
        return self._thread.call(self._afs.listxattr, path)

    def removexattr(self, path: PathLike, name: str | bytes) -> None:
        self._thread.call(self._afs.removexattr, path, name)

    def set_goal(self, path: PathLike, goal: int, recursive: bool = False) -> None:
        self._thread.call(self._afs.set_goal, path, goal, recursive)

    def set_trash_time(self, path: PathLike, seconds: int, recursive: bool = False) -> None:
        self._thread.call(self._afs.set_trash_time, path, seconds, recursive)

    def statvfs(self) -> os.statvfs_result:
        return self._thread.call(self._afs.statvfs)

    def concat(self, path: PathLike, sources: Sequence[PathLike]) -> None:
        """See AsyncFilesystem.concat: the sources' chunks appended to `path`, not copied."""
        self._thread.call(self._afs.concat, path, sources)

    def put_file(self, local_path: str | Path, remote_path: PathLike, progress: Progress | None = None, *,
                 exclusive: bool = False) -> None:
        """See AsyncFilesystem.put_file; `progress` is called from the client's thread."""
        self._thread.call(lambda: self._afs.put_file(local_path, remote_path, progress, exclusive=exclusive))

    def get_file(self, remote_path: PathLike, local_path: str | Path, progress: Progress | None = None) -> None:
        """See AsyncFilesystem.get_file; `progress` is called from the client's thread."""
        self._thread.call(self._afs.get_file, remote_path, local_path, progress)

    def close(self) -> None:
        """Close every file still open (durably), end the connection and its thread; raises the
        first error of those closes (a write it handed over failed) once all is done."""
        errors = self._thread.close_files()
        self._thread.stop()
        if errors:
            raise errors[0]

    def __enter__(self) -> Filesystem:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
