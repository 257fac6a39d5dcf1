"""The FUSE door on the client core (pyfuse3 on trio): only the mapping of FUSE to `chunkfs.client`.

- `operations.py`: the pyfuse3 Operations: maps each FUSE call to the core's `Client` (inode
  and file handle tables, the kernel's page cache for close-to-open), and is the one edge where
  errors become errnos.
- `invalidator.py`: makes the kernel forget what other clients changed (a listener of the
  core's change feed).
- `main.py`: configuration and the trio main loop; `helper.py`: `mount.chunkfs` for mount(8).
"""
