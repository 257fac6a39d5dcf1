#!/usr/bin/env bash
# What dedup costs and saves on a local cluster (2 chunkservers, goal 2): a file of SIZE_MB random
# MiB copied onto the mount into a directory with dedup on, the same file again under another name
# (uploads nothing), and another random file into a directory with `chunkfs dedup DIR off`. For
# each copy: seconds (cp + sync of the file), the mount's CPU seconds (/proc/PID/stat), and the
# bytes the chunkservers stored; then `chunkfs status`'s logical and physical bytes. Environment:
# SIZE_MB (default 1024), PORT (random, 20000-28999), ROOT. The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${ROOT:-/tmp/chunkfs-bench-dedup}
PORT=${PORT:-$((20000 + RANDOM % 9000))}
SIZE_MB=${SIZE_MB:-1024}
DIR="$ROOT/.chunkfs"
MNT="$ROOT/mnt"

cleanup() {
    "$CHUNKFS" down --dir "$DIR" >/dev/null 2>&1 || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

mkdir -p "$ROOT"
"$CHUNKFS" up --dir "$DIR" --mount "$MNT" --chunkservers 2 --goal 2 --port "$PORT" --no-gateway \
    --trash-time-s 0 >/dev/null
head -c "$((SIZE_MB << 20))" /dev/urandom > "$ROOT/one"
head -c "$((SIZE_MB << 20))" /dev/urandom > "$ROOT/other"
mkdir "$MNT/on" "$MNT/off"
"$CHUNKFS" dedup "$MNT/off" off --dir "$DIR" >/dev/null

mount_cpu() {
    local pid
    pid=$(cat "$DIR/run/mount.pid")
    awk '{ split($0, a, ") "); split(a[2], f, " "); print (f[12] + f[13]) / 100 }' "/proc/$pid/stat"
}

stored() {  # bytes the chunkservers have stored (every replica)
    local total=0 i
    for i in 1 2; do
        total=$((total + $(curl -s "http://127.0.0.1:$((PORT + i))/metrics" \
            | awk '/^chunkfs_chunkserver_written_bytes_total / { printf "%d", $2 }')))
    done
    echo "$total"
}

copy() {  # copy LABEL SOURCE TARGET
    local cpu0 stored0 t0 t1
    cpu0=$(mount_cpu); stored0=$(stored); t0=$(date +%s.%N)
    cp "$2" "$3"
    sync "$3"
    t1=$(date +%s.%N)
    awk -v label="$1" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        -v cpu="$(awk -v a="$cpu0" -v b="$(mount_cpu)" 'BEGIN { print b - a }')" \
        -v mib="$(( ($(stored) - stored0) >> 20 ))" \
        'BEGIN { printf "%-36s %7.2f s  mount CPU %6.2f s  stored %6d MiB\n", label, t, cpu, mib }'
}

copy "first copy (dedup on)" "$ROOT/one" "$MNT/on/a"
copy "second copy, same bytes (dedup on)" "$ROOT/one" "$MNT/on/b"
copy "unique bytes (dedup off)" "$ROOT/other" "$MNT/off/c"
cmp "$ROOT/one" "$MNT/on/b"
"$CHUNKFS" status --dir "$DIR" --json | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(f\"logical {s['chunk_bytes'] >> 20} MiB, physical {s['stored_bytes'] >> 20} MiB (one replica each), \"
      f\"ratio {s['chunk_bytes'] / s['stored_bytes']:.2f}\")"
