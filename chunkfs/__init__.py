"""chunkfs: a distributed filesystem.

The metaserver owns the namespace and the chunk table, chunkservers store 4 MiB chunks,
and the FUSE mount turns POSIX calls into metadata calls and chunk transfers.
"""

__version__ = "0.1.0"

CHUNK_SIZE = 4 * 1024 * 1024
"""Every file is cut into chunks of this many bytes (the last one may be shorter)."""

INLINE_MAX_BYTES = 64 * 1024
"""A file no bigger than this is stored inline: its bytes live in the metaserver's database beside
its attributes (as durable as the namespace itself) instead of in a chunk on chunkservers, so
writing it is one commit and reading it comes with the open."""

LEASE_S = 10.0
# a mount trusts its open leases this long past the send of its last answered change-feed poll;
# a metaserver answers no mutation this long after its start (metaserver/open_leases.py)
OPEN_TRUST_S = 3.0
"""A directory lease lasts this long after its holder last polled the change feed (see
chunkfs/metaserver/leases.py); the holder stops trusting it earlier."""

DEFAULT_METASERVER_PORT = 9520
ROOT_INODE = 1
MAX_NAME_BYTES = 255
