"""What the metaserver hands out of chunk tokens (`chunkfs.chunk_tokens`), and to whom: read
tokens with a file's layout and on renewal, each bound to the credential that asked (its
holder); the holder's token key, wrapped with that credential's own key, so only its holder can
sign the chunk requests presenting them; the chunk key, wrapped likewise, to a chunkserver that
registers.
"""

from __future__ import annotations

import errno

from aiohttp import web

from chunkfs import chunk_tokens
from chunkfs.chunk_tokens import TokenIssuer
from chunkfs.credentials import Export
from chunkfs.errors import FsError
from chunkfs.httpserver import SIGNER, VERIFIER
from chunkfs.metaserver.chunk_table import ChunkTable
from chunkfs.metaserver.db import Txn
from chunkfs.metaserver.exports import ExportGuard
from chunkfs.protocol import records as r


def holder(request: web.Request) -> str:
    """Whom the tokens issued in answer to `request` are bound to: the credential it was signed with."""
    return chunk_tokens.holder_of(request[SIGNER].key_id)


def wrapped_for(request: web.Request, key_hex: bytes) -> tuple[str, str]:
    """(nonce, `key_hex` wrapped with the key `request` was signed with): for its signer only."""
    found = request.app[VERIFIER].keys.key(request[SIGNER].key_id)
    return ("", "") if found is None else chunk_tokens.wrap(key_hex, found[0])


def chunk_key_for(tokens: TokenIssuer | None, request: web.Request) -> tuple[str, str]:
    """(nonce, chunk key) for a registering chunkserver; empty from a metaserver without tokens."""
    return ("", "") if tokens is None else wrapped_for(request, tokens.key)


def token_key_for(tokens: TokenIssuer | None, request: web.Request) -> r.TokenKey:
    """The caller's token key (`chunk_tokens.holder_key`), wrapped with its own key."""
    if tokens is None:
        return r.TokenKey()
    who = holder(request)
    return r.TokenKey(chunk_tokens.holder_key_id(who), *wrapped_for(request, tokens.holder_key(who)))


def with_read_tokens(tokens: TokenIssuer | None, refs: list[r.ChunkRef], to: str) -> list[r.ChunkRef]:
    """`refs`, each with a token to read its version, for the holder `to`."""
    if tokens is not None:
        for ref in refs:
            ref.token = tokens.issue(chunk_tokens.READ, ref.chunk_id, ref.version, holder=to)
    return refs


def read_tokens(tokens: TokenIssuer | None, chunks: ChunkTable, exports: ExportGuard, txn: Txn,
                req: r.TokensReq, export: tuple[str, Export] | None, to: str) -> list[str]:
    """New read tokens for chunk versions some file references (a client's expired), for the
    holder `to`: ESTALE for a version no file references (deleted, or never made), EACCES for
    one no file inside the caller's export holds (a version a snapshot shares is the copy's too)."""
    if tokens is None:
        raise FsError(errno.ENOSYS, "this metaserver issues no chunk tokens")
    issued = []
    for chunk_id, version in req.chunks:
        inodes = chunks.inodes_of_version(txn, chunk_id, version)
        if not inodes:
            raise FsError(errno.ESTALE, f"chunk {chunk_id} v{version} is no file's any more")
        if export is not None and not any(exports.inode_inside(txn, *export, ino) for ino in inodes):
            raise FsError(errno.EACCES, f"chunk {chunk_id} v{version} is outside this credential's export")
        issued.append(tokens.issue(chunk_tokens.READ, chunk_id, version, holder=to))
    return issued
