"""Client for the metaserver's API: one method per operation, typed records in and out."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from chunkfs.protocol import records as r
from chunkfs.protocol.http import SignedHttp

T = TypeVar("T")


CLIENT_HEADER = "X-Chunkfs-Client"


class MetaClient:
    def __init__(self, http: SignedHttp, address: str, client_id: str = "") -> None:
        """`client_id` names this client in the change feed, so it can skip its own changes."""
        self.http = http
        self.base = f"http://{address}"
        self.headers = {"Content-Type": "application/json", CLIENT_HEADER: client_id}

    async def call(self, op: str, request: Any, reply_type: type[T] | None = None) -> T | None:
        response = await self.http.request(
            "POST", f"{self.base}/v1/fs/{op}", content=r.json_encode(request), headers=self.headers,
        )
        if reply_type is None:
            return None
        return msgspec.json.decode(response.content, type=reply_type)

    # -- namespace ------------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> r.Attr:
        return await self.call("lookup", r.LookupReq(parent, name), r.Attr)

    async def getattr(self, ino: int) -> r.Attr:
        return await self.call("getattr", r.InodeReq(ino), r.Attr)

    async def setattr(self, req: r.SetattrReq) -> r.Attr:
        return await self.call("setattr", req, r.Attr)

    async def create(self, req: r.CreateReq) -> r.Attr:
        return await self.call("create", req, r.Attr)

    async def link(self, ino: int, parent: int, name: bytes) -> r.Attr:
        return await self.call("link", r.LinkReq(ino, parent, name), r.Attr)

    async def remove(self, parent: int, name: bytes, is_dir: bool) -> None:
        await self.call("remove", r.RemoveReq(parent, name, is_dir))

    async def rename(self, req: r.RenameReq) -> None:
        await self.call("rename", req)

    async def readdir(self, ino: int, after: bytes | None, limit: int = 1000) -> list[r.DirEntry]:
        return await self.call("readdir", r.ReaddirReq(ino, after, limit), list[r.DirEntry])

    async def parent(self, ino: int) -> r.Attr:
        return await self.call("parent", r.InodeReq(ino), r.Attr)

    async def readlink(self, ino: int) -> bytes:
        return await self.call("readlink", r.InodeReq(ino), bytes)

    async def resolve(self, path: bytes) -> r.Attr:
        return await self.call("resolve", r.PathReq(path), r.Attr)

    # -- xattrs -----------------------------------------------------------------------------
    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.call("getxattr", r.XattrReq(ino, name), bytes)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.call("setxattr", r.XattrReq(ino, name, value, flags))

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.call("listxattr", r.InodeReq(ino), list[bytes])

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.call("removexattr", r.XattrReq(ino, name))

    # -- file data --------------------------------------------------------------------------
    async def open_file(self, ino: int) -> r.FileLayout:
        return await self.call("open", r.InodeReq(ino), r.FileLayout)

    async def reserve(self, count: int) -> r.Reservation:
        return await self.call("reserve", r.ReserveReq(count), r.Reservation)

    async def commit(self, req: r.CommitReq) -> r.Attr:
        return await self.call("commit", req, r.Attr)

    # -- cluster ----------------------------------------------------------------------------
    async def statfs(self) -> r.Statfs:
        return await self.call("statfs", r.InodeReq(1), r.Statfs)

    async def set_goal(self, ino: int, goal: int, recursive: bool = False) -> r.Attr:
        return await self.call("goal", r.GoalReq(ino, goal, recursive), r.Attr)

    async def changes(self, since: int, wait_s: float) -> r.ChangeBatch:
        response = await self.http.request("GET", f"{self.base}/v1/changes",
                                           params={"since": since, "wait_s": wait_s}, retry_s=wait_s + 5,
                                           headers=self.headers)
        return msgspec.json.decode(response.content, type=r.ChangeBatch)

    async def status(self) -> r.ClusterStatus:
        response = await self.http.request("GET", f"{self.base}/v1/status")
        return msgspec.json.decode(response.content, type=r.ClusterStatus)

    async def servers_call(self, op: str, request: Any, reply_type: type[T]) -> T:
        """`/v1/servers/{op}`: what chunkservers and admins tell the metaserver about servers."""
        response = await self.http.request(
            "POST", f"{self.base}/v1/servers/{op}", content=r.json_encode(request),
            headers={"Content-Type": "application/json"},
        )
        return msgspec.json.decode(response.content, type=reply_type)

    async def hello(self, hello: r.ServerHello) -> r.HelloReply:
        return await self.servers_call("hello", hello, r.HelloReply)

    async def report_corrupt(self, report: r.CorruptReport) -> r.CorruptReply:
        return await self.servers_call("corrupt", report, r.CorruptReply)

    async def drain(self, server: str, draining: bool = True) -> r.ServerStatus:
        return await self.servers_call("drain", r.DrainReq(server, draining), r.ServerStatus)
