"""The metaserver's routes for `chunkfs credentials add/list/revoke` (admin keys only, see
access_policy.py): the store is `chunkfs.credentials`; a revoked key is refused from the next
request on, without a restart of anything."""

from __future__ import annotations

import errno
import logging

from aiohttp import web

from chunkfs.credentials import ROLES, CredentialStore, Export
from chunkfs.errors import FsError
from chunkfs.httpserver import SIGNER, json_response, read_body
from chunkfs.protocol import records as r

log = logging.getLogger(__name__)
CREDENTIALS = web.AppKey("credentials", CredentialStore)


async def list_credentials(request: web.Request) -> web.Response:
    return json_response([c.public() for c in request.app[CREDENTIALS].listing()])


async def change_credentials(request: web.Request) -> web.Response:
    store, action = request.app[CREDENTIALS], request.match_info["action"]
    signer = request[SIGNER].key_id or "the cluster secret"
    if action == "add":
        req = await read_body(request, r.CredentialReq)
        if req.role not in ROLES:
            raise FsError(errno.EINVAL, f"role {req.role!r} is not one of {', '.join(ROLES)}")
        credential, text = store.add(req.role, req.name, Export(req.subtree, req.read_only, req.maproot, req.min_goal,
                                                                req.max_goal, tuple(req.networks)))
        log.info("credential %s added (%s %s) by %s", credential.key_id, credential.role, credential.name, signer)
        return json_response({**credential.public(), "credential": text})
    if action == "revoke":
        revoke = await read_body(request, r.RevokeReq)
        if not revoke.key_id and not (revoke.role and revoke.name):
            raise FsError(errno.EINVAL, "revoke a key id, or a role and a name")
        gone = store.revoke(revoke.key_id, revoke.role, revoke.name)
        for credential in gone:
            log.info("credential %s revoked (%s %s) by %s", credential.key_id, credential.role, credential.name,
                     signer)
        return json_response([c.public() for c in gone])
    raise FsError(errno.ENOSYS, f"unknown action {action!r}")


def add_routes(app: web.Application, store: CredentialStore) -> None:
    app[CREDENTIALS] = store
    app.router.add_get("/v1/credentials", list_credentials)
    app.router.add_post("/v1/credentials/{action}", change_credentials)
