"""The chunkfs gateway: the namespace over HTTP, as S3 and as a REST API, a door on the client
core (`chunkfs/client/`) like the mount.

- `main.py`: the daemon (`chunkfs-gateway`): config, the client core, two hypercorn servers;
- `s3_app.py`: the S3 door (operations, the error edge), `s3_xml.py` its XML, `s3_errors.py`
  its error codes; `sigv4.py` (signatures, by botocore's canonicalization), `aws_chunked.py`
  (streamed bodies), `checksums.py` (MD5 ETags, Content-MD5, x-amz-checksum-*),
  `multipart.py` (multipart uploads, and the collection of abandoned uploads);
- `rest_app.py`: the REST door (`/api/v1/`), `tus.py` its resumable uploads;
- `objects.py`: buckets and keys on the namespace (the S3 model), `listing_cache.py` (a
  directory kept for a listing's next page), `streams.py`: bodies in and out and Range;
  `access.py`: an access key's view of the core; `keys.py`: the access keys; `metrics.py`,
  `lifespan.py`;
- users on the REST door: `callers.py` (who a request acts as: key, token, cookie), `tokens.py`,
  `login_throttle.py`, `auth_api.py` (/api/v1/auth), `shares.py` (share links), `tree_api.py`
  (mkdir, move, usage), `downloads.py`, `rest_errors.py`, `web_pages.py` and `web/` (the web
  file manager).

Why Starlette on hypercorn's trio worker: the client core is trio (the mount needs it), and a
handler that awaits the core on the core's own loop costs nothing extra; any asyncio server
(aiohttp, uvicorn) would put a thread or loop hand-off (~170-190 us a call, measured for the
Python API's synchronous face) on every read and write. hypercorn is the maintained ASGI server
with a native trio worker (`hypercorn.trio.serve` runs in our nursery), Starlette (on anyio,
so on trio) gives requests, streamed responses and routing without a framework's weight.
Measured with `bench/gateway_server.py` (the server alone: a null app, raw-socket clients) on
the shared 2-core machine at a load average of 11-12 (five engineers' jobs), so noisy: 223 and
302 small GETs/s over 16 keep-alive connections, a 1 GiB streamed PUT consumed at 0.08-0.10
GB/s (the issue measured ~2,400 requests/s and ~0.9 GB/s for this stack on these cores idle).
Several gateway processes behind one address scale it out (they share nothing but the
cluster).
"""
