"""The FUSE client (pyfuse3 on trio).

- `operations.py`: the pyfuse3 Operations: maps each FUSE call to the pieces below, and is the
  one edge where errors become errnos.
- `open_file.py`: one open inode's state: write buffering, chunk uploads, reads, commit.
- `chunk_cache.py`: recently used chunks in memory, one fetch per chunk at a time.
- `chunk_io.py`: chunk transfer with replica fail-over and end-to-end checksums.
- `prefetch.py`: how many chunks to fetch ahead.
- `main.py`: configuration and the trio main loop; `helper.py`: `mount.chunkfs` for mount(8).
"""
