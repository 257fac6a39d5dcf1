"""Who a chunkserver serves: the metaserver (requests signed with the chunk key) and holders of a
chunk token for the chunk version and operation they ask for (`chunkfs.chunk_tokens`).

A chunkserver running on a chunkserver credential holds no client's, gateway's or admin's key:
its own credential signs what it sends the metaserver, and the chunk key it learns in the answer
to its registration (`ChunkKeys.learn`) is all it checks with. Until it has registered it knows
no key: a token request is answered 503 (clients retry), a signed one 401. One given the cluster
secret (the set-up before roles) also accepts requests signed with it, as every server does.
"""

from __future__ import annotations

import errno

from aiohttp import web

from chunkfs import chunk_tokens
from chunkfs.auth import CLUSTER_ROLE, split_credential
from chunkfs.errors import FsError
from chunkfs.protocol import limits, records as r
from chunkfs.request_checks import parse_int, path_id

_OPERATIONS = {"GET": chunk_tokens.READ, "HEAD": chunk_tokens.READ, "PUT": chunk_tokens.WRITE,
               "DELETE": chunk_tokens.DELETE}


class ChunkKeys:
    """The chunk key as learnt from the metaserver: the `auth.KeyRing` of the chunkserver's
    signed routes and the key its tokens are checked with."""

    def __init__(self, own_secret: bytes) -> None:
        self.own_secret = own_secret  # what the chunkserver signs with (the key is wrapped with it)
        self.chunk_key: bytes | None = None

    def key(self, key_id: str) -> tuple[bytes, str] | None:
        if not key_id and split_credential(self.own_secret)[0] is None:
            return self.own_secret, CLUSTER_ROLE  # given the cluster secret itself: it may sign too
        if key_id != chunk_tokens.METASERVER_KEY_ID or self.chunk_key is None:
            return None
        return self.chunk_key, chunk_tokens.METASERVER_KEY_ID

    def learn(self, reply: r.HelloReply) -> None:
        if reply.chunk_key:
            self.chunk_key = chunk_tokens.unwrap(reply.chunk_key_nonce, reply.chunk_key,
                                                 split_credential(self.own_secret)[1])


CHUNK_KEYS = web.AppKey("chunk_keys", ChunkKeys)


def token_check(request: web.Request) -> FsError | None:
    """The verdict on a request carrying a chunk token (httpserver's TOKEN_CHECK): only the chunk
    routes take one, for the operation its method is; a partial write also needs a read token
    of the version it patches."""
    if request.match_info.get("chunk_id") is None or request.path.endswith("/copy"):
        return FsError(errno.EACCES, "only a chunk's read, write and delete take a chunk token")
    key = request.app[CHUNK_KEYS].chunk_key
    if key is None:
        raise web.HTTPServiceUnavailable(text="this chunkserver has not registered with the metaserver yet")
    op = _OPERATIONS.get(request.method)
    if op is None:
        return FsError(errno.EACCES, f"no chunk token is for {request.method}")
    try:
        chunk_id, version = path_id(request, "chunk_id"), path_id(request, "version")
    except FsError as exc:
        return exc
    refused = chunk_tokens.refusal(key, request.headers[chunk_tokens.TOKEN_HEADER], op, chunk_id, version)
    if refused is None and op == chunk_tokens.WRITE and "base_version" in request.query:
        try:
            base = parse_int(request.query["base_version"], "base_version", 1, limits.MAX_ID)
        except FsError as exc:
            return exc
        refused = chunk_tokens.refusal(key, request.headers.get(chunk_tokens.BASE_TOKEN_HEADER, ""),
                                       chunk_tokens.READ, chunk_id, base)
    return refused

