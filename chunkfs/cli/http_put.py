"""`chunkfs put --url`: a put through the gateway's REST API, for users with an access key and
no cluster secret. Each file goes as a tus 1.0 upload (`/api/v1/uploads/`, see
`chunkfs/gateway/tus.py`): created once, sent in PATCHes of PATCH_BYTES, and remembered in a
local state file (`$XDG_CACHE_HOME/chunkfs/http-puts.json`, by gateway, target and the local
file's size, mtime and inode). A put that was killed or cut off, run again, asks the gateway
for the upload's offset and sends only the rest; the file shows at the target once whole.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

PATCH_BYTES = 64 << 20
READ_BYTES = 1 << 20
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}


class HttpPutError(Exception):
    """A put the gateway refused (`status`, its message) or could not be reached for (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _state_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chunkfs" / "http-puts.json"


def _load_state() -> dict[str, str]:
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(state: dict[str, str]) -> None:
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}")
    temporary.write_text(json.dumps(state))
    os.replace(temporary, path)


def _remember(key: str, location: str | None) -> None:
    state = _load_state()
    if location is None:
        state.pop(key, None)
    else:
        state[key] = location
    _save_state(state)


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text or response.reason_phrase
    raise HttpPutError(response.status_code, f"{what}: {response.status_code} {message}")


def _pieces(local: Path, start: int, length: int) -> Iterator[bytes]:
    with open(local, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            data = f.read(min(READ_BYTES, left))
            if not data:
                return
            left -= len(data)
            yield data


class GatewayPut:
    """Puts through one gateway (`url`: its REST address, e.g. http://HOST:9581) with one key."""

    def __init__(self, url: str, key: str, timeout_s: float = 60.0) -> None:
        self.base = url.rstrip("/").removesuffix("/api/v1")
        self.client = httpx.Client(headers={"Authorization": f"Bearer {key}", **TUS_HEADERS}, timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def put(self, local: Path, target: str, progress: Callable[[int], None] | None = None) -> int:
        """Upload `local` as `target` (an absolute path on the cluster); the bytes found sent
        already by an earlier run of the same put (resumed), 0 for a fresh one."""
        st = local.stat()
        key = hashlib.sha256(f"{self.base}\0{target}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()).hexdigest()
        location, offset = self._resumable(_load_state().get(key))
        resumed = offset
        if location is None:
            metadata = f"path {base64.b64encode(target.encode()).decode()}"
            response = self._call("POST", "/api/v1/uploads/", headers={"Upload-Length": str(st.st_size),
                                                                        "Upload-Metadata": metadata})
            _raise_for(response, target)
            location, offset = response.headers["Location"], 0
            _remember(key, location)
        if progress is not None and offset:
            progress(offset)
        while offset < st.st_size:
            length = min(PATCH_BYTES, st.st_size - offset)
            response = self._call("PATCH", location, content=_pieces(local, offset, length), headers={
                "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length)})
            _raise_for(response, target)
            new_offset = int(response.headers["Upload-Offset"])
            if progress is not None:
                progress(new_offset - offset)
            offset = new_offset
        _remember(key, None)
        return resumed

    def _resumable(self, location: str | None) -> tuple[str | None, int]:
        """The upload at `location` and its offset if the gateway still has it, else (None, 0)."""
        if location is None:
            return None, 0
        response = self._call("HEAD", location)
        if response.status_code != 200:
            return None, 0
        return location, int(response.headers.get("Upload-Offset", "0"))

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return self.client.request(method, self.base + path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise HttpPutError(0, f"cannot reach the gateway at {self.base}: {exc}") from exc


@contextlib.contextmanager
def gateway_put(url: str, key: str) -> Iterator[GatewayPut]:
    put = GatewayPut(url, key)
    try:
        yield put
    finally:
        put.close()
