#!/usr/bin/env bash
# Small-file and metadata speed of a local chunkfs cluster (3 chunkservers, goal 2) beside local
# disk, in one run: creates/s, stats/s (warm, and with the kernel's caches dropped), unlinks/s of
# 4 KiB files, and the time of `cp -a` and of a no-op `rsync -a` of a 5,000-file tree.
# Extra arguments go to `chunkfs bench`, e.g. `bench/small_files.sh --files 5000 --json`.
# The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${CHUNKFS_BENCH_ROOT:-/tmp/chunkfs-bench-small}
PORT=${CHUNKFS_BENCH_PORT:-19620}
LOCAL=/var/tmp/chunkfs-bench-small-local

cleanup() {
    "$CHUNKFS" down --dir "$ROOT/.chunkfs" || true
    rm -rf "$ROOT/.chunkfs"
    rmdir "$LOCAL" "$ROOT/mnt" "$ROOT" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$LOCAL"
"$CHUNKFS" up --dir "$ROOT/.chunkfs" --mount "$ROOT/mnt" --goal 2 --port "$PORT" >/dev/null
"$CHUNKFS" bench "$ROOT/mnt" --compare "$LOCAL" --only small --only tree --files 5000 --tree-files 5000 "$@"
