"""The errno edge of the Python API: what the core raises becomes the `OSError` a program
expects from `os` and `open`, with the errno a mount would give.

- `FsError(errno.X)` becomes `OSError(X, message, path)`: Python picks the subclass
  (FileNotFoundError for ENOENT, PermissionError for EACCES/EPERM, FileExistsError,
  IsADirectoryError, NotADirectoryError...);
- a server that cannot be reached within `retry_s` (`TransportError`) becomes OSError(EIO),
  as on a mount;
- anything else passes unchanged (ValueError for a closed file, TypeError for bad arguments,
  KeyboardInterrupt and trio's cancellation).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chunkfs.errors import FsError, TransportError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def os_error(exc: FsError | TransportError, path: Any = None) -> OSError:
    if isinstance(exc, FsError):
        err, message = exc.errno, str(exc)
    else:
        err, message = errno.EIO, f"the cluster did not answer: {exc}"
    if path is not None and not isinstance(path, (str, bytes)):
        path = os.fspath(path)
    return OSError(err, message, path) if path is not None else OSError(err, message)


def raises_os_errors(method: F) -> F:
    """`method` raises OSErrors naming its path: a file's own `name` (its methods' arguments are
    data and offsets, never paths: `write(b"...")` must not name its bytes), else the method's
    first argument if that is a path."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except (FsError, TransportError) as exc:
            path = getattr(self, "name", None)
            if path is None and args and isinstance(args[0], (str, bytes, os.PathLike)):
                path = args[0]
            raise os_error(exc, path) from None

    return wrapper  # type: ignore[return-value]
