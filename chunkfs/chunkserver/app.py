"""The chunkserver's HTTP routes: PUT, GET and DELETE of one chunk version."""

from __future__ import annotations

import asyncio
import errno

from aiohttp import web

from chunkfs.errors import FsError
from chunkfs.httpserver import json_response, make_app
from chunkfs.chunkserver.store import ChunkStore
from chunkfs.protocol.chunk_client import CHECKSUM_HEADER
from chunkfs import CHUNK_SIZE

STORE = web.AppKey("store", ChunkStore)


def _chunk_key(request: web.Request) -> tuple[int, int]:
    try:
        return int(request.match_info["chunk_id"]), int(request.match_info["version"])
    except ValueError:
        raise FsError(errno.EINVAL, "chunk id and version must be integers") from None


async def put_chunk(request: web.Request) -> web.Response:
    chunk_id, version = _chunk_key(request)
    checksum = request.headers.get(CHECKSUM_HEADER)
    if not checksum:
        raise FsError(errno.EINVAL, f"missing {CHECKSUM_HEADER} header")
    data = await request.read()
    await asyncio.to_thread(request.app[STORE].write, chunk_id, version, data, checksum)
    return json_response({"ok": True})


async def get_chunk(request: web.Request) -> web.Response:
    chunk_id, version = _chunk_key(request)
    data = await asyncio.to_thread(request.app[STORE].read, chunk_id, version)
    return web.Response(body=data, content_type="application/octet-stream")


async def delete_chunk(request: web.Request) -> web.Response:
    chunk_id, version = _chunk_key(request)
    removed = await asyncio.to_thread(request.app[STORE].delete, chunk_id, version)
    return json_response({"removed": removed})


async def health(request: web.Request) -> web.Response:
    store = request.app[STORE]
    capacity, used = store.capacity()
    return json_response({"ok": True, "role": "chunkserver", "id": store.server_id,
                          "capacity_bytes": capacity, "used_bytes": used})


def build_app(store: ChunkStore, secret: bytes, background) -> web.Application:
    app = make_app(secret, client_max_size=CHUNK_SIZE + 65536)
    app[STORE] = store
    route = "/v1/chunks/{chunk_id}/{version}"
    app.router.add_put(route, put_chunk)
    app.router.add_get(route, get_chunk)
    app.router.add_delete(route, delete_chunk)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(background)
    return app
