"""What the file manager does to the tree beyond files' bytes, as REST calls:

    POST /api/v1/dirs/{path}     make the directory (its parent must exist)      -> 201
    POST /api/v1/move            {"from": PATH, "to": PATH}: rename or move; an existing file
                                 at `to` is not replaced (409) unless "replace": true
    GET  /api/v1/usage?path=P    bytes and files below P (default: the caller's home), as the
                                 caller may list them

Each is one call of the client core made as the caller: the namespace's permissions decide,
and errors are its OSErrors, mapped at the REST door's edge.
"""

from __future__ import annotations

import errno
import stat

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chunkfs.client import AsyncFilesystem
from chunkfs.gateway.auth_api import small_form, text_field
from chunkfs.gateway.rest_errors import RestError

MAX_USAGE_ENTRIES = 1_000_000  # a walk this long is cut short (and says so)


async def make_directory(request: Request, afs: AsyncFilesystem) -> Response:
    path = afs.canonical("/" + request.path_params["path"])
    await afs.mkdir(path, 0o777)  # the caller's umask (022) applies, as for mkdir(1)
    return JSONResponse({"path": path}, status_code=201)


async def move(request: Request, afs: AsyncFilesystem) -> Response:
    values = await small_form(request)
    source, target = afs.canonical(text_field(values, "from")), afs.canonical(text_field(values, "to"))
    if source == "/" or target == "/":
        raise RestError(400, "BadPath", "the root cannot be moved or replaced")
    if target == source or target.startswith(source + "/"):
        raise RestError(400, "BadPath", "a directory cannot move into itself")
    if values.get("replace") is not True:
        try:
            await afs.lstat(target)
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EEXIST, f"{target} exists")
    await afs.rename(source, target)
    return JSONResponse({"from": source, "to": target})


async def usage(request: Request, afs: AsyncFilesystem) -> Response:
    top = afs.canonical(request.query_params.get("path", "/"))
    files = directories = size = seen = 0
    pending = [top]
    while pending and seen < MAX_USAGE_ENTRIES:
        directory = pending.pop()
        try:
            entries = await afs.scandir(directory)
        except PermissionError:
            continue
        for entry in entries:
            seen += 1
            st = entry.stat()
            if stat.S_ISDIR(st.st_mode):
                directories += 1
                pending.append(f"{directory.rstrip('/')}/{entry.name}")
            else:
                files += 1
                size += st.st_size
    return JSONResponse({"path": top, "bytes": size, "files": files, "directories": directories,
                         "complete": not pending, "quota_bytes": None})
