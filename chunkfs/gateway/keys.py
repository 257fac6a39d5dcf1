"""Access keys of the gateway: who a request acts as, and the secret it is signed with.

A key is a name, an access key id, the uid/gid its requests act as, and a random salt. Its
secret is never stored: it is derived when needed as HMAC-SHA256(server key, "chunkfs-gateway
access key" | id | salt), where the server key is the cluster secret (the gateway holds it
anyway to reach the cluster). SigV4 needs the secret on the server side to recompute a
signature; deriving it gives that without a table of secrets to leak: the keys file alone
(readable or not) gives nobody a secret, and removing a key (or re-adding it, which draws a
new salt) makes its old secret worthless. The cost: rotating the cluster secret changes every
access key's secret.

The file is JSON, written atomically (temp file + rename, 0600, owned by the owner of its
directory: under systemd the gateway's user `chunkfs`, even when root adds the key); the gateway re-reads it when
its mtime changes, so `chunkfs gateway key add/remove` takes effect without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path

DERIVATION_LABEL = b"chunkfs-gateway access key\0"
ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits


class KeyStoreError(LookupError):
    """A key that is not there, or a name already taken."""


@dataclass(frozen=True)
class AccessKey:
    name: str
    access_key_id: str
    uid: int
    gid: int
    salt: str  # hex; the secret's only stored ingredient beside the server key

    def secret(self, server_key: bytes) -> str:
        mac = hmac.new(server_key, DERIVATION_LABEL + self.access_key_id.encode() + b"\0" + bytes.fromhex(self.salt),
                       hashlib.sha256).digest()
        return base64.b64encode(mac, altchars=b"+/").decode()[:40]


class KeyStore:
    """The keys file, re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, AccessKey] = {}  # access key id -> key

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._keys = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        records = json.loads(self.path.read_text() or "[]")
        self._keys = {k["access_key_id"]: AccessKey(**k) for k in records}
        self._stamp = stamp

    def by_access_key(self, access_key_id: str) -> AccessKey | None:
        self._load()
        return self._keys.get(access_key_id)

    def all(self) -> list[AccessKey]:
        self._load()
        return sorted(self._keys.values(), key=lambda k: k.name)

    def add(self, name: str, uid: int, gid: int) -> AccessKey:
        keys = self.all()
        if any(k.name == name for k in keys):
            raise KeyStoreError(f"a key named {name!r} exists (remove it first)")
        key = AccessKey(name=name, access_key_id="CK" + "".join(secrets.choice(ACCESS_KEY_ALPHABET) for _ in range(18)),
                        uid=uid, gid=gid, salt=secrets.token_hex(16))
        self._write([*keys, key])
        return key

    def remove(self, name_or_id: str) -> AccessKey:
        keys = self.all()
        gone = [k for k in keys if name_or_id in (k.name, k.access_key_id)]
        if not gone:
            raise KeyStoreError(f"no key named {name_or_id!r}")
        self._write([k for k in keys if k not in gone])
        return gone[0]

    def _write(self, keys: list[AccessKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(k) for k in keys], f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        parent = self.path.parent.stat()
        if os.geteuid() == 0:  # root adding a key for a gateway that runs as the directory's owner
            os.chown(tmp, parent.st_uid, parent.st_gid)
        os.replace(tmp, self.path)
        self._stamp = None
