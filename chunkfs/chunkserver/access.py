"""Who a chunkserver serves: the metaserver (requests signed with the chunk key) and holders of a
chunk token for the chunk version and operation they ask for, each request signed with the token
key of the holder it was issued to (`chunkfs.chunk_tokens`).

A chunkserver running on a chunkserver credential holds no client's, gateway's or admin's key:
its own credential signs what it sends the metaserver, and the chunk key it learns in the answer
to its registration (`ChunkKeys.learn`) is all it checks with (the token holders' keys are
derived from it). Until it has registered it knows no key: a token request is answered 503
(clients retry), a signed one 401. One given the cluster
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
        self.holders: chunk_tokens.HolderKeys | None = None

    def key(self, key_id: str) -> tuple[bytes, str] | None:
        if not key_id and split_credential(self.own_secret)[0] is None:
            return self.own_secret, CLUSTER_ROLE  # given the cluster secret itself: it may sign too
        if self.chunk_key is None or self.holders is None:
            return None
        if key_id == chunk_tokens.METASERVER_KEY_ID:
            return self.chunk_key, chunk_tokens.METASERVER_KEY_ID
        return self.holders.key(key_id)

    def learn(self, reply: r.HelloReply) -> None:
        if reply.chunk_key:
            key = chunk_tokens.unwrap(reply.chunk_key_nonce, reply.chunk_key, split_credential(self.own_secret)[1])
            if key != self.chunk_key:
                self.chunk_key, self.holders = key, chunk_tokens.HolderKeys(key)

    def copier_credential(self) -> bytes | None:
        """What this chunkserver signs a copy's read from a peer with (the replicator's tokens
        are the chunkservers'); None before it has registered."""
        if self.chunk_key is None:
            return None
        return chunk_tokens.holder_credential(self.chunk_key, chunk_tokens.CHUNKSERVERS_HOLDER)


CHUNK_KEYS = web.AppKey("chunk_keys", ChunkKeys)


def authorize(request: web.Request, role: str) -> str | None:
    """A token holder's key serves only with a token (see `token_check`)."""
    if role == chunk_tokens.HOLDER_ROLE:
        return "a token holder's key is good only with a chunk token"
    return None


def token_check(request: web.Request) -> FsError | str:
    """The verdict on a request carrying a chunk token (httpserver's TOKEN_CHECK): the key id
    the request must be signed with (its token's holder's), or why it is refused. Only the chunk
    routes take one, for the operation its method is; a partial write also needs a read token
    of the version it patches, issued to the same holder."""
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
    holder = chunk_tokens.refusal(key, request.headers[chunk_tokens.TOKEN_HEADER], op, chunk_id, version)
    if isinstance(holder, str) and op == chunk_tokens.WRITE and "base_version" in request.query:
        try:
            base = parse_int(request.query["base_version"], "base_version", 1, limits.MAX_ID)
        except FsError as exc:
            return exc
        base_holder = chunk_tokens.refusal(key, request.headers.get(chunk_tokens.BASE_TOKEN_HEADER, ""),
                                           chunk_tokens.READ, chunk_id, base)
        if isinstance(base_holder, FsError):
            return base_holder
        if base_holder != holder:
            return FsError(errno.EACCES, "the base version's token was issued to another holder")
    return holder

