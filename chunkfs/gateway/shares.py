"""Share links: a file or directory handed out as an unguessable URL, for a while.

    POST   /api/v1/shares        {path, expires_in_s, password?, max_downloads?} -> {id, url, ...}
    GET    /api/v1/shares        the caller's links (an admin's: every link, with ?all)
    DELETE /api/v1/shares/{id}   revoke (its maker or an admin)
    GET    /s/{token}            the file (Range supported), or a directory's listing page
    GET    /s/{token}/{path}     a file below a shared directory;  ?zip: the directory as a zip
    POST   /s/{token}            the password form of a protected link

Who may share: anyone who may read the file (or list the directory) now. A download acts as the
link's maker (uid, gid, groups), so the namespace still decides: a file the maker can no longer
read is refused. A link is served until it expires, is revoked, reaches its download count, or
its file is removed or replaced (the link holds the inode it was made for); then it answers 410
with a page that says which. The metaserver counts downloads (`use_share`): a GET that starts at
byte 0 counts, a resumed range (a player seeking, a download manager resuming) and a HEAD do not.

The token is 32 random bytes (base64url); the link's id is the first 128 bits of its SHA-256,
so a listing (or the database) gives ids that revoke links but cannot be used as links.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from chunkfs import CHUNK_SIZE
from chunkfs.client import AsyncFilesystem
from chunkfs.errors import FsError, TransportError
from chunkfs.gateway.access import Access
from chunkfs.gateway.auth_api import small_form, text_field
from chunkfs.gateway.callers import basic_credentials, caller_in
from chunkfs.gateway.downloads import file_response
from chunkfs.gateway.login_throttle import LoginThrottle
from chunkfs.gateway.rest_errors import RestError
from chunkfs.gateway.streams import RangeNotSatisfiable
from chunkfs.gateway.tokens import TokenIssuer
from chunkfs.gateway.tus import RouteWrapper
from chunkfs.gateway.web_pages import escape, page
from chunkfs.passwords import MAX_PASSWORD_CHARS, hash_password, verify_password
from chunkfs.protocol.accounts import AccountsClient, Share, new_share_token, share_id

log = logging.getLogger(__name__)

MAX_EXPIRES_S = 365 * 86400
PASS_COOKIE_TTL_S = 3600
GONE_PAGES = {
    "expired": ("This link has expired", "The person who shared it set it to stop working, and that time has passed."),
    "revoked": ("This link was revoked", "The person who shared it has withdrawn it."),
    "exhausted": ("This link has been used up", "It could be downloaded a set number of times, and it has been."),
    "removed": ("The shared file is gone", "The file or folder this link was made for has been removed or replaced."),
}

def _public(share: Share) -> dict[str, object]:
    return {"id": share.id, "path": share.path, "is_dir": share.is_dir, "owner": share.owner,
            "created_at": share.created_at, "expires_at": share.expires_at, "max_downloads": share.max_downloads,
            "downloads": share.downloads, "password": bool(share.password_hash), "revoked": share.revoked,
            "expired": share.expires_at <= time.time()}


def _number(values: dict[str, object], name: str, default: float | None, low: float, high: float) -> float:
    value = values.get(name, default)
    if isinstance(value, str) and value.strip():
        try:
            value = float(value)
        except ValueError:
            value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise RestError(400, "BadRequest", f"{name} must be a number from {low:g} to {high:g}")
    return float(value)


class ShareLinks:
    def __init__(self, access: Access, accounts: AccountsClient, tokens: TokenIssuer,
                 bytes_out: Callable[[int], None]) -> None:
        self.access, self.accounts, self.tokens, self.bytes_out = access, accounts, tokens, bytes_out
        self.throttle = LoginThrottle()  # guesses at a link's password, as at a user's

    # ---- the API of the links' makers ---------------------------------------------------------------
    async def create(self, request: Request, afs: AsyncFilesystem) -> Response:
        caller = caller_in(request)
        values = await small_form(request)
        path = afs.canonical(text_field(values, "path"))
        expires_in_s = _number(values, "expires_in_s", None, 1, MAX_EXPIRES_S)
        max_downloads = int(_number(values, "max_downloads", 0, 0, 2**31))
        password = text_field(values, "password", MAX_PASSWORD_CHARS)
        st = await afs.stat(path)
        if stat.S_ISDIR(st.st_mode):
            await afs.scandir(path)  # the caller may list it
        elif stat.S_ISREG(st.st_mode):
            await (await afs.open(path, "rb")).aclose()  # the caller may read it
        else:
            raise RestError(400, "NotShareable", "only files and directories can be shared")
        token, new_id = new_share_token()
        share = await self.accounts.add_share(Share(
            id=new_id, path=path, ino=st.st_ino, is_dir=stat.S_ISDIR(st.st_mode), owner=caller.name,
            uid=caller.uid, gid=caller.gid, groups=list(caller.groups), expires_at=time.time() + expires_in_s,
            password_hash=await trio.to_thread.run_sync(hash_password, password) if password else "",
            max_downloads=max_downloads))
        url = f"{str(request.base_url).rstrip('/')}/s/{token}"
        return JSONResponse({**_public(share), "url": url}, status_code=201)

    async def listing(self, request: Request, afs: AsyncFilesystem) -> Response:
        caller = caller_in(request)
        every = caller.is_admin and "all" in request.query_params
        shares = await self.accounts.shares(None if every else caller.name)
        return JSONResponse({"shares": [_public(s) for s in sorted(shares, key=lambda s: -s.created_at)]})

    async def revoke(self, request: Request, afs: AsyncFilesystem) -> Response:
        caller = caller_in(request)
        try:
            share = await self.accounts.share(request.path_params["share_id"])
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                raise RestError(404, "NotFound", "no such share link") from None
            raise
        if share.owner != caller.name and not caller.is_admin:
            raise RestError(404, "NotFound", "no such share link")  # another's link: as if it did not exist
        return JSONResponse(_public(await self.accounts.revoke_share(share.id)))

    # ---- the links themselves ---------------------------------------------------------------------
    async def serve(self, request: Request) -> Response:
        """GET/HEAD of a link, and its password form: never a JSON error, a page that says what
        happened."""
        try:
            if request.method == "POST":
                return await self._password_form(request)
            return await self._serve(request)
        except RangeNotSatisfiable:
            return Response(status_code=416, headers={"Content-Range": "bytes */*"})
        except (FileNotFoundError, NotADirectoryError):
            return page("Not found", "<p>There is no such file in the shared folder.</p>", 404)
        except PermissionError:
            return page("Not available", "<p>This file cannot be read through this link (any more).</p>", 403)
        except (FsError, TransportError):
            log.exception("a share link could not be served")
            return page("Not available", "<p>The storage does not answer; try again in a minute.</p>", 503)
        except OSError as exc:
            return page("Not available", f"<p>{escape(exc.strerror or exc)}</p>", 400)

    async def _serve(self, request: Request) -> Response:
        token = request.path_params["token"]
        sub = request.path_params.get("path", "")
        if any(part == ".." for part in sub.split("/")) or "\0" in sub:
            return page("Bad path", "<p>A path in a share link cannot go up ('..').</p>", 400)
        want_zip = "zip" in request.query_params
        counts = request.method == "GET" and (want_zip or _from_start(request.headers.get("range")))
        use = await self.accounts.use_share(share_id(token), count=False)
        if use.share is None:
            return page("No such link", "<p>This link does not exist. Check that it was copied whole.</p>", 404)
        if use.refused:
            return _gone(use.refused)
        share = use.share
        if share.password_hash and not await self._password_given(request, share):
            return _password_page(token, 401, "")
        afs = self.access.filesystem_as(share.uid, share.gid, tuple(share.groups))
        try:
            st = await afs.stat(share.path)
        except FileNotFoundError:
            return _gone("removed")
        if st.st_ino != share.ino:
            return _gone("removed")
        path = afs.canonical(share.path + "/" + sub) if sub else share.path
        target = await afs.stat(path) if sub else st
        if stat.S_ISDIR(target.st_mode) and not want_zip:
            return await self._directory_page(afs, token, path, sub)
        if want_zip and not stat.S_ISDIR(target.st_mode):
            return page("Not a folder", "<p>Only a folder is downloaded as a zip.</p>", 400)
        if counts:
            use = await self.accounts.use_share(share.id, count=True)
            if use.refused:
                return _gone(use.refused)
        name = path.rsplit("/", 1)[-1] or "share"
        if want_zip:
            return StreamingResponse(zip_stream(afs, path), media_type="application/zip", headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name + '.zip', safe='')}",
                "Referrer-Policy": "no-referrer"})
        response = await file_response(request, afs, path, target, self.bytes_out,
                                       attachment=name if share.is_dir or "download" in request.query_params else None)
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def _password_given(self, request: Request, share: Share) -> bool:
        cookie = request.cookies.get(_pass_cookie(share.id))
        if cookie and self.tokens.share_pass_holds(cookie, share.id):
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # curl -u :PASSWORD
            return await self._password_holds(request, share, basic_credentials(credentials).partition(":")[2])
        return False

    async def _password_holds(self, request: Request, share: Share, password: str) -> bool:
        """The link's password check, slowed down after repeated failures for the link and the address."""
        address = request.client.host if request.client else "?"
        if self.throttle.wait_s(f"share:{share.id}", address) > 0:
            return False
        if await trio.to_thread.run_sync(verify_password, share.password_hash, password):
            return True
        self.throttle.failed(f"share:{share.id}", address)
        return False

    async def _password_form(self, request: Request) -> Response:
        """The password of a protected link, from its form: right, and the browser gets a pass
        for this link (a cookie) and is sent back to it."""
        token = request.path_params["token"]
        use = await self.accounts.use_share(share_id(token), count=False)
        if use.share is None:
            return page("No such link", "<p>This link does not exist.</p>", 404)
        if use.refused:
            return _gone(use.refused)
        try:
            password = text_field(await small_form(request), "password", MAX_PASSWORD_CHARS)
        except RestError:
            password = ""
        if not await self._password_holds(request, use.share, password):
            return _password_page(token, 401, "That password is not right (or too many tries: wait a little).")
        response = RedirectResponse(f"/s/{quote(token)}", status_code=303)
        response.set_cookie(_pass_cookie(use.share.id), self.tokens.share_pass(use.share.id, PASS_COOKIE_TTL_S),
                            max_age=PASS_COOKIE_TTL_S, path=f"/s/{token}", httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        return response

    async def _directory_page(self, afs: AsyncFilesystem, token: str, path: str, sub: str) -> Response:
        entries = sorted(await afs.scandir(path), key=lambda e: (not e.is_dir(), e.name))
        base = f"/s/{quote(token)}/" + "".join(quote(p) + "/" for p in sub.split("/") if p)
        rows = "".join(
            f'<tr><td><a href="{escape(base + quote(e.name))}">{escape(e.name)}{"/" if e.is_dir() else ""}</a></td>'
            f'<td class="num">{"" if e.is_dir() else escape(_size(e.stat().st_size))}</td></tr>'
            for e in entries if e.is_dir() or e.is_file())
        zip_link = escape((base.rstrip("/") if sub else f"/s/{quote(token)}") + "?zip")
        title = path.rsplit("/", 1)[-1] or "shared folder"
        return page(title, f'<p><a class="button" href="{zip_link}">Download all as zip</a></p>'
                           f'<table class="files"><tr><th>name</th><th>size</th></tr>{rows}</table>')

    def routes(self, wrap: RouteWrapper) -> list[Route]:
        return [Route("/api/v1/shares", wrap("share_create", self.create), methods=["POST"]),
                Route("/api/v1/shares", wrap("share_list", self.listing), methods=["GET"]),
                Route("/api/v1/shares/{share_id}", wrap("share_revoke", self.revoke),
                      methods=["DELETE"]),
                Route("/s/{token}", self.serve, methods=["GET", "HEAD", "POST"]),
                Route("/s/{token}/{path:path}", self.serve, methods=["GET", "HEAD"])]


def _from_start(range_header: str | None) -> bool:
    return not range_header or range_header.strip().startswith(("bytes=0-", "bytes=-"))


def _pass_cookie(share: str) -> str:
    return f"chunkfs_share_{share}"


def _size(n_bytes: int) -> str:
    value, unit = float(n_bytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n_bytes} B" if unit == "B" else f"{value:.1f} {unit}"


def _gone(reason: str) -> Response:
    title, text = GONE_PAGES.get(reason, GONE_PAGES["expired"])
    return page(title, f"<p>{escape(text)}</p><p>Ask the person who sent it for a new link.</p>", 410)


def _password_page(token: str, status: int, message: str) -> Response:
    note = f'<p class="error">{escape(message)}</p>' if message else ""
    return page("This link needs a password",
                f'{note}<form method="post" action="/s/{escape(quote(token))}">'
                f'<label>Password <input type="password" name="password" autofocus></label>'
                f'<button type="submit">Open</button></form>', status)


class _Sink:
    """Where zipfile writes: the bytes wait here until the stream takes them (no seek, so
    zipfile writes each member's sizes after its data, as streamed zips do)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes, /) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


async def _walk(afs: AsyncFilesystem, top: str, prefix: str = "") -> AsyncIterator[tuple[str, str, os.stat_result]]:
    """(path, name in the archive, stat) of every directory and file below `top` the identity
    may list; what it may not is left out."""
    try:
        entries = sorted(await afs.scandir(top), key=lambda e: e.name)
    except PermissionError:
        return
    for entry in entries:
        path, name = f"{top}/{entry.name}", f"{prefix}{entry.name}"
        if entry.is_dir():
            yield path, name + "/", entry.stat()
            async for below in _walk(afs, path, name + "/"):
                yield below
        elif entry.is_file():
            yield path, name, entry.stat()


async def zip_stream(afs: AsyncFilesystem, top: str) -> AsyncIterator[bytes]:
    """The directory `top` as a zip (stored, zip64), streamed as it is read: files the identity
    cannot read are left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        async for path, name, st in _walk(afs, top.rstrip("/") or "/"):
            info = zipfile.ZipInfo(name, time.gmtime(max(st.st_mtime, 315532800))[:6])
            if name.endswith("/"):
                archive.writestr(info, b"")
                continue
            try:
                afile = await afs.open(path, "rb")
            except PermissionError:
                continue
            try:
                with archive.open(info, "w", force_zip64=True) as member:
                    while data := await afile.read(CHUNK_SIZE):
                        member.write(data)
                        yield sink.take()
            finally:
                with trio.CancelScope(shield=True):
                    await afile.aclose()
            if sink.buffer:
                yield sink.take()
    yield sink.take()  # the central directory
