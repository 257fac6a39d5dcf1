"""Client for the chunkservers' API: put, get and delete one version of one chunk.

A call given a chunk token (`chunkfs.chunk_tokens`: a client's, from the metaserver) is sent with
it, signed with the token key of its holder (`presenting_tokens_as`: the chunkserver admits it
only from the client the token was issued to); a call without one is signed with the client's
own key (the metaserver's: the chunk key)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from chunkfs import auth
from chunkfs.chunk_tokens import BASE_TOKEN_HEADER, TOKEN_HEADER
from chunkfs.protocol import records as r
from chunkfs.protocol.disk_check import INVENTORY_PATH, Inventory
from chunkfs.protocol.http import SignedHttp

CHECKSUM_HEADER = auth.CHECKSUM_HEADER  # signed, and standing for the body in the signature (see auth)
CHECKSUM_PARAM = "checksum"
CLIENT_VERIFIES_PARAM = "client_verifies"  # GET: the server may skip its block checks (see get)
OFFSET_PARAM, LENGTH_PARAM = "offset", "length"  # a ranged GET: in the query, which is signed (see auth)
BLOCK_SUMS_HEADER = "X-Chunkfs-Block-Sums"  # a ranged GET's answer: its blocks' xxh3s, hex
CHUNK_CHECKSUM_HEADER = "X-Chunkfs-Chunk-Checksum"  # ... and the chunk checksum its file's header holds
TOKEN_PARAM = "token"  # a copy's: the read token for its source
EPOCH_HEADER = "X-Chunkfs-Epoch"  # a metaserver's DELETE or copy: its primary epoch (chunkserver/fencing.py)


@dataclass(frozen=True)
class BlockAnswer:
    """A chunkserver's answer to a ranged read. `block_sums`: the blocks' xxh3s (8 bytes a
    block); None from a chunkserver older than ranged reads, which ignored the range and sent
    the whole chunk (a rolling upgrade that reached clients first), to be checked as a whole.
    `chunk_checksum`: the chunk checksum in the header the server read the block sums from (None
    from a server older than that check)."""

    data: bytes | bytearray
    block_sums: bytes | None
    chunk_checksum: str | None


def chunk_url(address: str, chunk_id: int, version: int) -> str:
    return f"http://{address}/v1/chunks/{chunk_id}/{version}"


def _with_token(headers: dict[str, str] | None, token: str) -> dict[str, str] | None:
    return {**(headers or {}), TOKEN_HEADER: token} if token else headers


class ChunkClient:
    def __init__(self, http: SignedHttp, fencing_epoch: int = 0, token_http: SignedHttp | None = None) -> None:
        """`fencing_epoch`: a primary metaserver's epoch (election.py), sent with the requests it
        signs that change what a chunkserver holds, so a former primary's are refused there.
        `token_http`: what signs the calls that present a chunk token (`presenting_tokens_as`)."""
        self.http = http
        self.fencing_epoch = fencing_epoch
        self.token_http = token_http or http

    def presenting_tokens_as(self, holder_credential: bytes | None) -> ChunkClient:
        """This client, signing the calls that present a token with `holder_credential` (the
        holder's token key: `chunk_tokens.holder_credential`); None: with its own key."""
        if holder_credential is None:
            return ChunkClient(self.http, self.fencing_epoch)
        return ChunkClient(self.http, self.fencing_epoch, self.http.signing_with(holder_credential))

    def _for(self, token: str) -> SignedHttp:
        return self.token_http if token else self.http

    def _fenced(self, headers: dict[str, str] | None, token: str) -> dict[str, str] | None:
        if token or not self.fencing_epoch:
            return headers
        return {**(headers or {}), EPOCH_HEADER: str(self.fencing_epoch)}

    async def put(self, address: str, chunk_id: int, version: int, data: bytes, checksum: str,
                  retry_s: float | None = None, token: str = "") -> None:
        """Store `data` as a new chunk version; returns once it is fsynced on that server."""
        await self._for(token).request(
            "PUT", chunk_url(address, chunk_id, version), content=data,
            headers=_with_token({CHECKSUM_HEADER: checksum, "Content-Type": "application/octet-stream"}, token),
            retry_s=retry_s,
        )

    async def put_patch(self, address: str, chunk_id: int, version: int, base_version: int, offset: int,
                        piece: bytes, checksum: str, token: str = "", base_token: str = "") -> str:
        """Make `version` from `base_version` with `piece` written at `offset`, on that server;
        returns the checksum of the whole new version (compare it across replicas). With a
        write `token`, a read `base_token` of the base version."""
        headers = {CHECKSUM_HEADER: checksum, "Content-Type": "application/octet-stream"}
        if base_token:
            headers[BASE_TOKEN_HEADER] = base_token
        response = await self._for(token).request(
            "PUT", chunk_url(address, chunk_id, version), content=piece,
            params={"base_version": base_version, "offset": offset}, headers=_with_token(headers, token),
        )
        new_checksum: str = response.json()["checksum"]
        return new_checksum

    async def get(self, address: str, chunk_id: int, version: int, retry_s: float | None = None,
                  client_verifies: bool = False, token: str = "") -> bytes | bytearray:
        """The whole stored chunk, verified against its block checksums on the server, or, with
        `client_verifies`, sent from disk unverified (zero-copy): then the caller must check it
        against the chunk's checksum, and ask again without `client_verifies` if it does not
        match (the server then finds and reports a corrupt copy)."""
        params = {CLIENT_VERIFIES_PARAM: 1} if client_verifies else None
        response = await self._for(token).request("GET", chunk_url(address, chunk_id, version), params=params,
                                                  retry_s=retry_s, headers=_with_token(None, token))
        return response.content

    async def get_blocks(self, address: str, chunk_id: int, version: int, offset: int, length: int,
                         retry_s: float | None = None, token: str = "", checksum: str = "") -> BlockAnswer:
        """`length` bytes of the chunk from `offset`, clipped to its end: a ranged read. `offset`
        is at a block (`checksum.BLOCK_SIZE`). `checksum`: the version's in the chunk table; the
        server refuses (EBADMSG) to serve a file whose header holds another. The server verified the
        blocks against its block checksums before it answered; the caller checks the answer
        (`BlockAnswer`), which catches what went wrong on the way."""
        params: dict[str, str | int] = {OFFSET_PARAM: offset, LENGTH_PARAM: length}
        if checksum:
            params[CHECKSUM_PARAM] = checksum
        response = await self._for(token).request("GET", chunk_url(address, chunk_id, version), params=params,
                                                  retry_s=retry_s, headers=_with_token(None, token))
        header = response.header(BLOCK_SUMS_HEADER)
        if header is None:
            return BlockAnswer(response.content, None, None)
        try:
            sums = bytes.fromhex(header)
        except ValueError:
            sums = b""  # fails the caller's check
        return BlockAnswer(response.content, sums, response.header(CHUNK_CHECKSUM_HEADER))

    async def delete(self, address: str, chunk_id: int, version: int, retry_s: float | None = None,
                     token: str = "") -> None:
        await self._for(token).request("DELETE", chunk_url(address, chunk_id, version), retry_s=retry_s,
                                       headers=_with_token(self._fenced(None, token), token))

    async def inventory(self, address: str, min_age_s: float, retry_s: float | None = None) -> list[r.ChunkFile]:
        """The chunk versions the server holds in files at least `min_age_s` old."""
        response = await self.http.request("GET", f"http://{address}/v1/chunks", params={"min_age_s": min_age_s},
                                           retry_s=retry_s)
        return msgspec.json.decode(response.content, type=list[r.ChunkFile])

    async def inventory_of_buckets(self, address: str, buckets: range, min_age_s: float, verify: bool = False,
                                   retry_s: float | None = None) -> Inventory:
        """The chunk versions the server holds in `buckets` (see `chunkfs.protocol.disk_check`);
        `verify` has it re-read each of them first."""
        params = {"first_bucket": buckets.start, "buckets": len(buckets), "min_age_s": min_age_s,
                  "verify": int(verify)}
        response = await self.http.request("GET", f"http://{address}{INVENTORY_PATH}", params=params,
                                           retry_s=retry_s)
        return msgspec.json.decode(response.content, type=Inventory)

    async def copy(self, address: str, chunk_id: int, version: int, source: str, checksum: str,
                   retry_s: float | None = None, source_token: str = "") -> None:
        """Have the server at `address` fetch the chunk version from `source` (with the read
        token `source_token`) and store it, checked against `checksum`; returns once it is
        fsynced there."""
        await self.http.request(
            "POST", f"{chunk_url(address, chunk_id, version)}/copy",
            params={"from": source, CHECKSUM_PARAM: checksum, TOKEN_PARAM: source_token}, retry_s=retry_s,
            headers=self._fenced(None, ""),
        )
