"""The metadata server: namespace, chunk table, chunkserver registry, placement and deletions.

- `db.py`: the LMDB environment, its tables and key encodings, and group commit.
- `namespace.py`: inodes, directory entries, attributes, xattrs.
- `chunk_table.py`: file -> chunks, versions, replicas; allocation, commit, pending deletions.
- `registry.py`: chunkservers known, alive by heartbeat, placement weighted by free space.
- `deleter.py`: background removal of dropped chunk versions on their chunkservers.
- `app.py`: the HTTP routes; `main.py`: configuration and start-up.
"""
