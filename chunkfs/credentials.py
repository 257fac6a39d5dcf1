"""Role credentials: every part of the cluster with a key of its own, made, listed and revoked
on the metaserver (`chunkfs credentials add/list/revoke`, admin keys only).

Roles: `chunkserver`, `client` (a mount, the command line, the Python API), `gateway` and `admin`;
what each may call is `chunkfs.metaserver.access_policy`. The cluster secret itself keeps the
role `cluster` (everything), so a cluster set up with one secret works as before, and each
daemon moves to its own key by pointing its `--secret-file` at its credential.

A credential's key is never stored: it is HMAC-SHA256(cluster secret, "chunkfs credential" | key
id | salt), derived again when a signature is checked, as the gateway's access keys are. The store
(`credentials.json` in the metaserver's data directory) holds ids, roles, names, salts and
exports, so reading it gives nobody a key; revoking a credential takes it out of the store the
metaserver checks every request against (at once), and adding the same name again makes a
second key beside the first (rotation: give the holder the new one, then revoke the old key id).
The file is read again when it changes on disk (checked at most every `RELOAD_S`), so a store
edited or restored by hand takes effect within a second too.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chunkfs import auth
from chunkfs.durable_files import replace_durably

ROLES = ("chunkserver", "client", "gateway", "admin")
RELOAD_S = 0.5
_LABEL = b"chunkfs credential"


@dataclass(frozen=True)
class Export:
    """What a client or gateway credential may reach (as a line of an exports file): the subtree
    it may mount and name, read-only or not, the uid root is mapped to (`maproot`: root squash
    when 65534; -1 keeps root), the goals it may set (`min_goal`..`max_goal`) and the networks
    its requests may come from (`networks`, CIDRs; empty: any)."""

    subtree: str = "/"
    read_only: bool = False
    maproot: int = -1
    min_goal: int = 1
    max_goal: int = 16
    networks: tuple[str, ...] | list[str] = ()

    def allows_address(self, address: str | None) -> bool:
        """Whether a request from `address` (the peer's IP) may use this export."""
        if not self.networks:
            return True
        try:
            peer = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(peer in ipaddress.ip_network(network, strict=False) for network in self.networks)


@dataclass(frozen=True)
class Credential:
    key_id: str
    role: str
    name: str
    salt: str
    created: float
    export: Export = field(default_factory=Export)

    def key(self, cluster_secret: bytes) -> bytes:
        return hmac.digest(cluster_secret, b"|".join((_LABEL, self.key_id.encode(), self.salt.encode())),
                           "sha256").hex().encode()

    def public(self) -> dict[str, object]:
        """What `list` shows: everything but the salt."""
        shown = asdict(self)
        del shown["salt"]
        return shown


class CredentialStore:
    """The metaserver's credentials, and the `auth.KeyRing` its verifier looks keys up in."""

    def __init__(self, path: Path, cluster_secret: bytes) -> None:
        self.path = path
        self.cluster_secret = cluster_secret
        self._by_id: dict[str, Credential] = {}
        self._keys: dict[str, bytes] = {}
        self._mtime_ns = -1
        self._checked_at = 0.0
        self._reload()

    def key(self, key_id: str) -> tuple[bytes, str] | None:
        if not key_id:
            return self.cluster_secret, auth.CLUSTER_ROLE
        now = time.monotonic()
        if now - self._checked_at > RELOAD_S:
            self._checked_at = now
            self._reload()
        credential = self._by_id.get(key_id)
        if credential is None:
            return None
        key = self._keys.get(key_id)
        if key is None:
            key = self._keys[key_id] = credential.key(self.cluster_secret)
        return key, credential.role

    def get(self, key_id: str) -> Credential | None:
        return self._by_id.get(key_id)

    def listing(self) -> list[Credential]:
        return sorted(self._by_id.values(), key=lambda c: (c.role, c.name, c.created))

    def add(self, role: str, name: str, export: Export | None = None) -> tuple[Credential, str]:
        """A new credential and what its holder's secret file holds."""
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        credential = Credential(key_id="K" + secrets.token_hex(10), role=role, name=name,
                                salt=secrets.token_hex(16), created=time.time(), export=export or Export())
        self._by_id[credential.key_id] = credential
        self._save()
        return credential, auth.credential_text(credential.key_id, credential.key(self.cluster_secret).decode())

    def revoke(self, key_id: str = "", role: str = "", name: str = "") -> list[Credential]:
        """Revokes the credential `key_id`, or every one of `role` named `name`."""
        gone = [c for c in self._by_id.values()
                if (key_id and c.key_id == key_id) or (not key_id and c.role == role and c.name == name)]
        for credential in gone:
            del self._by_id[credential.key_id]
            self._keys.pop(credential.key_id, None)
        if gone:
            self._save()
        return gone

    def _reload(self) -> None:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime_ns = 0
        if mtime_ns == self._mtime_ns:
            return
        records = json.loads(self.path.read_text()) if mtime_ns else []
        by_id = {}
        for record in records:
            export = Export(**record.pop("export", {}))
            credential = Credential(**record, export=export)
            by_id[credential.key_id] = credential
        self._by_id, self._keys, self._mtime_ns = by_id, {}, mtime_ns

    def _save(self) -> None:
        """Written whole to a new file, fsynced and renamed into place (0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(c) for c in self.listing()], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, self.path)
        self._mtime_ns = self.path.stat().st_mtime_ns
