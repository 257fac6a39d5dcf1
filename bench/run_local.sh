#!/usr/bin/env bash
# Benchmark a local chunkfs cluster (3 chunkservers, goal 2) against a local-disk directory and
# a tmpfs directory. Extra arguments go to `chunkfs bench`, e.g. `bench/run_local.sh --size-mb 256`.
# The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=/tmp/chunkfs-bench
LOCAL=/var/tmp/chunkfs-bench-local
TMPFS=/dev/shm/chunkfs-bench-tmpfs

cleanup() {
    "$CHUNKFS" down --dir "$ROOT/.chunkfs" || true
    rmdir "$LOCAL" "$TMPFS" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$LOCAL" "$TMPFS"
"$CHUNKFS" up --dir "$ROOT/.chunkfs" --mount "$ROOT/mnt" --goal 2 --port 19520
"$CHUNKFS" bench "$ROOT/mnt" --compare "$LOCAL" --compare "$TMPFS" "$@"
