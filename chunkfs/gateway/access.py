"""Who a request acts as: an access key's filesystem view, one per key, on the gateway's one
client core (one set of open files, caches and leases for every caller; only the identity the
permission checks use differs)."""

from __future__ import annotations

import dataclasses
import hmac

from chunkfs.client import AsyncFilesystem, Identity
from chunkfs.gateway.keys import AccessKey, KeyStore
from chunkfs.gateway.listing_cache import DirectorySnapshots
from chunkfs.gateway.objects import XATTR_ETAG, ObjectInfo, ObjectStore
from chunkfs.gateway.version_cache import VersionCache

GATEWAY_UMASK = 0o022
MAX_KEPT_SECRETS = 1024


class Access:
    def __init__(self, afs: AsyncFilesystem, keys: KeyStore, server_key: bytes) -> None:
        self.afs, self.keys, self.server_key = afs, keys, server_key
        self._views: dict[tuple[int, int, tuple[int, ...]], AsyncFilesystem] = {}
        self._snapshots: dict[tuple[int, int], DirectorySnapshots] = {}  # by uid, gid: what they may list
        self._descriptions: dict[tuple[int, int], VersionCache[ObjectInfo]] = {}  # by uid, gid: what they read
        self._secrets: dict[AccessKey, str] = {}  # derived once per key (an HMAC and a base64 a request)

    def filesystem_for(self, key: AccessKey) -> AsyncFilesystem:
        """The core as `key`'s uid/gid sees it (made once per key; never closed on its own: the
        gateway's filesystem closes the core)."""
        return self.filesystem_as(key.uid, key.gid)

    def filesystem_as(self, uid: int, gid: int, groups: tuple[int, ...] = ()) -> AsyncFilesystem:
        """The core as this identity sees it (a logged-in user's, a share link's maker's); made
        once per identity."""
        index = (uid, gid, groups)
        view = self._views.get(index)
        if view is None:
            identity = Identity(uid, gid, groups, GATEWAY_UMASK)
            view = AsyncFilesystem(self.afs.client, dataclasses.replace(self.afs.options, identity=identity))
            self._views[index] = view
        return view

    def objects_for(self, key: AccessKey) -> ObjectStore:
        identity = (key.uid, key.gid)
        snapshots = self._snapshots.get(identity) or self._snapshots.setdefault(identity, DirectorySnapshots(XATTR_ETAG))
        descriptions = self._descriptions.get(identity) or self._descriptions.setdefault(identity, VersionCache())
        return ObjectStore(self.filesystem_for(key), snapshots, descriptions)

    def credentials(self, access_key_id: str) -> tuple[AccessKey, str] | None:
        """The key with this id and its secret (what SigV4 signs with), or None."""
        key = self.keys.by_access_key(access_key_id)
        return None if key is None else (key, self._secret(key))

    def _secret(self, key: AccessKey) -> str:
        """`key`'s secret; a key removed from the keys file is no longer looked up, and one added
        again is another key (a new salt)."""
        secret = self._secrets.get(key)
        if secret is None:
            if len(self._secrets) >= MAX_KEPT_SECRETS:
                self._secrets.clear()
            secret = self._secrets[key] = key.secret(self.server_key)
        return secret

    def key_for_token(self, access_key_id: str, secret: str) -> AccessKey | None:
        """The key whose id and secret these are (the REST API's bearer token), or None."""
        key = self.keys.by_access_key(access_key_id)
        if key is None or not hmac.compare_digest(self._secret(key), secret):
            return None
        return key
