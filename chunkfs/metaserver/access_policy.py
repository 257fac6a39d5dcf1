"""Which role may call which metaserver route: least privilege for the role credentials
(`chunkfs.credentials`).

Checked for every signed request once its signature is (`chunkfs.httpserver`), before the handler
runs, so a refused call (403, EPERM) changes nothing. A route not listed here is refused to every
role but `cluster` (the cluster secret, which may do everything, as before roles).

- `client` (mounts, the command line, the API) and `gateway`: the filesystem calls, the change
  feed and the status; not `fsck` of the namespace, not the chunkservers' routes, not gc, drain,
  fsck, backup or credentials.
- `chunkserver`: its registration and heartbeats and its reports of corrupt copies; nothing of
  the namespace.
- `admin`: everything but the chunkservers' own routes (an admin key cannot pose as a
  chunkserver).
"""

from __future__ import annotations

from aiohttp import web

from chunkfs.auth import CLUSTER_ROLE
from chunkfs.protocol.meta_client import STEP_DOWN_PATH
from chunkfs.protocol.replication_client import BACKUP_PATH, REPLICATION_PATH

CLIENTS = frozenset({"client", "gateway", "admin"})
ADMIN = frozenset({"admin"})
CHUNKSERVER = frozenset({"chunkserver"})

ROUTE_ROLES: dict[str, frozenset[str]] = {
    "POST /v1/fs/{op}": CLIENTS,
    "GET /v1/changes": CLIENTS,
    "GET /v1/status": CLIENTS,
    "POST /v1/servers/hello": CHUNKSERVER,
    "POST /v1/servers/corrupt": CHUNKSERVER,
    "POST /v1/servers/drain": ADMIN,
    "POST /v1/servers/gc": ADMIN,
    "POST /v1/servers/fsck": ADMIN,
    f"GET {BACKUP_PATH}": ADMIN,
    f"GET {REPLICATION_PATH}": ADMIN,
    f"POST {STEP_DOWN_PATH}": ADMIN,  # chunkfs metaserver switchover (failover.py)
    "POST /v1/accounts/{op}": frozenset({"gateway", "admin"}),  # users, logins, share links (accounts.py)
    "GET /v1/credentials": ADMIN,
    "POST /v1/credentials/{action}": ADMIN,
    "GET /metrics": ADMIN,  # when /metrics and the status page are not open (see status_access)
    "GET /": ADMIN,
}
# /v1/fs/{op} only an admin may call: fsck and its checks, quotas' limits, the trash (like the
# meta mount of other systems: it lists and brings back anybody's removed files), and marking a
# tree read-only or writable again (a read-only snapshot stays so against every client key)
ADMIN_FS_OPERATIONS = frozenset({"fsck", "quota_check", "sharing_check", "quota_set", "quota_remove", "trash_list",
                                 "trash_restore", "trash_purge", "read_only"})


def refusal(request: web.Request, role: str) -> str | None:
    """None if `role` may make this request, else why not."""
    if role == CLUSTER_ROLE:
        return None
    resource = getattr(request.match_info.route, "resource", None)
    route = f"{request.method} {resource.canonical}" if resource is not None else ""
    allowed = ROUTE_ROLES.get(route, frozenset())
    if role not in allowed:
        return f"a {role} key may not call {request.method} {request.path}"
    if route == "POST /v1/fs/{op}" and request.match_info["op"] in ADMIN_FS_OPERATIONS and role not in ADMIN:
        return f"a {role} key may not call {request.match_info['op']}"
    return None
