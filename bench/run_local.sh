#!/usr/bin/env bash
# Benchmark a local chunkfs cluster (3 chunkservers, goal 2) against a local-disk directory and
# a tmpfs directory. Extra arguments go to `chunkfs bench`, e.g. `bench/run_local.sh --size-mb 256`.
# The cluster goes down again however the script ends.
# CHUNKFS_BENCH_ROOT and CHUNKFS_BENCH_PORT move the cluster (two runs on one machine need
# different ones); the local-disk and tmpfs directories are named after the root.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${CHUNKFS_BENCH_ROOT:-/tmp/chunkfs-bench}
PORT=${CHUNKFS_BENCH_PORT:-19520}
NAME=$(basename "$ROOT")
LOCAL=/var/tmp/$NAME-local
TMPFS=/dev/shm/$NAME-tmpfs

cleanup() {
    "$CHUNKFS" down --dir "$ROOT/.chunkfs" || true
    rmdir "$LOCAL" "$TMPFS" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$LOCAL" "$TMPFS"
"$CHUNKFS" up --dir "$ROOT/.chunkfs" --mount "$ROOT/mnt" --goal 2 --port "$PORT"
"$CHUNKFS" bench "$ROOT/mnt" --compare "$LOCAL" --compare "$TMPFS" "$@"
