"""A chunk server: stores chunk versions as files on local disk and serves them.

- `store.py`: the on-disk format (one file per chunk version, checksummed header), atomic
  writes, verified reads.
- `app.py`: HTTP routes; `heartbeat.py`: registration and heartbeats to the metaserver;
  `fencing.py`: with failover, only the newest primary metaserver's deletions are obeyed;
  `main.py`: configuration and start-up.
"""
