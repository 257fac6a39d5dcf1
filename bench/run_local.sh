#!/usr/bin/env bash
# Benchmark a local chunkfs cluster (3 chunkservers, goal 2) against a local-disk directory, a
# tmpfs directory and a plain pyfuse3 passthrough of another tmpfs directory (what FUSE costs
# by itself, bench/passthrough.py). Extra arguments go to `chunkfs bench`, e.g.
# `bench/run_local.sh --size-mb 256`. The cluster and the passthrough go down again however
# the script ends.
# CHUNKFS_BENCH_ROOT and CHUNKFS_BENCH_PORT move the cluster (two runs on one machine need
# different ones); the other directories are named after the root.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${CHUNKFS_BENCH_ROOT:-/tmp/chunkfs-bench}
PORT=${CHUNKFS_BENCH_PORT:-19520}
NAME=$(basename "$ROOT")
LOCAL=/var/tmp/$NAME-local
TMPFS=/dev/shm/$NAME-tmpfs
PASSTHROUGH_SOURCE=/dev/shm/$NAME-passthrough-source
PASSTHROUGH=$ROOT/passthrough
passthrough_pid=

cleanup() {
    if [ -n "$passthrough_pid" ]; then
        fusermount3 -u "$PASSTHROUGH" 2>/dev/null || true
        kill "$passthrough_pid" 2>/dev/null || true
        wait "$passthrough_pid" 2>/dev/null || true
        fusermount3 -u "$PASSTHROUGH" 2>/dev/null || true
    fi
    "$CHUNKFS" down --dir "$ROOT/.chunkfs" || true
    rmdir "$LOCAL" "$TMPFS" "$PASSTHROUGH_SOURCE" "$PASSTHROUGH" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$LOCAL" "$TMPFS" "$PASSTHROUGH_SOURCE" "$PASSTHROUGH"
.venv/bin/python bench/passthrough.py "$PASSTHROUGH_SOURCE" "$PASSTHROUGH" &
passthrough_pid=$!
for _ in $(seq 100); do
    mountpoint -q "$PASSTHROUGH" && break
    kill -0 "$passthrough_pid" 2>/dev/null || { echo "bench/passthrough.py did not mount" >&2; exit 1; }
    sleep 0.1
done
mountpoint -q "$PASSTHROUGH" || { echo "bench/passthrough.py did not mount within 10 s" >&2; exit 1; }
"$CHUNKFS" up --dir "$ROOT/.chunkfs" --mount "$ROOT/mnt" --goal 2 --port "$PORT"
"$CHUNKFS" bench "$ROOT/mnt" --compare "$LOCAL" --compare "$TMPFS" --compare "$PASSTHROUGH" "$@"
