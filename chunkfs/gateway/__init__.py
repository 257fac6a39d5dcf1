"""The chunkfs gateway: the namespace over HTTP, as S3 and as a REST API, a door on the client
core (`chunkfs/client/`) like the mount.

- `main.py`: the daemon (`chunkfs-gateway`): config, the client core, two hypercorn servers;
- `s3_app.py`: the S3 door (operations, the error edge), `s3_xml.py` its XML, `s3_errors.py`
  its error codes; `sigv4.py` (signatures, by botocore's canonicalization), `aws_chunked.py`
  (streamed bodies), `checksums.py` (MD5 ETags, Content-MD5, x-amz-checksum-*);
- `rest_app.py`: the REST door (`/api/v1/`);
- `objects.py`: buckets and keys on the namespace (the S3 model), `streams.py`: bodies in and
  out and Range; `access.py`: an access key's view of the core; `keys.py`: the access keys.

Why Starlette on hypercorn's trio worker: the client core is trio (the mount needs it), and a
handler that awaits the core on the core's own loop costs nothing extra; any asyncio server
(aiohttp, uvicorn) would put a thread or loop hand-off (~170-190 us a call, measured for the
Python API's synchronous face) on every read and write. hypercorn is the maintained ASGI server
with a native trio worker (`hypercorn.trio.serve` runs in our nursery), Starlette (on anyio,
so on trio) gives requests, streamed responses and routing without a framework's weight.
Measured on the shared 2-core machine with `bench/gateway_server.py` (a null app, no cluster;
noisy, other engineers' jobs running; details in the README):
small GETs ~1,500-2,000 requests/s from one process with 32 concurrent clients, a 1 GiB
streamed PUT consumed at ~0.6-0.9 GB/s. Several gateway processes behind one address scale
it out (the core holds no state that two gateways would have to share beyond the cluster).
"""
