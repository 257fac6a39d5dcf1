"""The chunkfs client core: everything a client does, with no FUSE in it (the mount is one door
on it, the Python API another)."""
