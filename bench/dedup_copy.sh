#!/usr/bin/env bash
# What dedup costs and saves on a local cluster (2 chunkservers, goal 2): a file of SIZE_MB random
# MiB copied onto the mount into a directory with dedup on, the same file again under another name
# (uploads nothing), and another random file into a directory with `chunkfs dedup DIR off`; then
# PAIRS pairs of files of fresh random bytes, each copied once into the dedup-on directory and once
# into the dedup-off one (the order alternating from pair to pair), for the mount's CPU per copy of
# unique data with dedup on and off. Each copy is `dd bs=1M` + sync of the file: seconds, the
# mount's CPU seconds (utime + stime, /proc/PID/stat), the bytes the chunkservers stored. Then
# `chunkfs status`'s logical and physical bytes.
# Environment: SIZE_MB (default 1024), PAIRS (default 3), PORT (random, 20000-28999), ROOT;
# PROFILE_DIR: record the mount and the metaserver with py-spy (.venv/bin or PATH) during the
# second copy, leave the raw profiles there and print their top frames.
# The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${ROOT:-/tmp/chunkfs-bench-dedup}
PORT=${PORT:-$((20000 + RANDOM % 9000))}
SIZE_MB=${SIZE_MB:-1024}
PAIRS=${PAIRS:-3}
PROFILE_DIR=${PROFILE_DIR:-}
DIR="$ROOT/.chunkfs"
MNT="$ROOT/mnt"
SPIES=()

cleanup() {
    local spy
    for spy in "${SPIES[@]}"; do kill -INT "$spy" 2>/dev/null || true; done
    "$CHUNKFS" down --dir "$DIR" >/dev/null 2>&1 || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

mkdir -p "$ROOT"
"$CHUNKFS" up --dir "$DIR" --mount "$MNT" --chunkservers 2 --goal 2 --port "$PORT" --no-gateway \
    --trash-time-s 0 >/dev/null
for name in one other $(seq -f "unique%g" 1 "$PAIRS"); do
    head -c "$((SIZE_MB << 20))" /dev/urandom > "$ROOT/$name"
done
mkdir "$MNT/on" "$MNT/off"
"$CHUNKFS" dedup "$MNT/off" off --dir "$DIR" >/dev/null

cpu_of() {  # CPU seconds (user + system) of the process whose pid file is $1
    awk '{ split($0, a, ") "); split(a[2], f, " "); print (f[12] + f[13]) / 100 }' "/proc/$(cat "$1")/stat"
}

stored() {  # bytes the chunkservers have stored (every replica)
    local total=0 i
    for i in 1 2; do
        total=$((total + $(curl -s "http://127.0.0.1:$((PORT + i))/metrics" \
            | awk '/^chunkfs_chunkserver_written_bytes_total / { printf "%.0f", $2 }')))
    done
    echo "$total"
}

LAST_CPU=0
copy() {  # copy LABEL SOURCE TARGET: prints its line, leaves the mount's CPU seconds in LAST_CPU
    local cpu0 stored0 t0 t1 seconds
    cpu0=$(cpu_of "$DIR/run/mount.pid"); stored0=$(stored); t0=$(date +%s.%N)
    dd if="$2" of="$3" bs=1M status=none
    sync "$3"
    t1=$(date +%s.%N)
    seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    LAST_CPU=$(awk -v a="$cpu0" -v b="$(cpu_of "$DIR/run/mount.pid")" 'BEGIN { print b - a }')
    awk -v label="$1" -v t="$seconds" -v cpu="$LAST_CPU" -v mib="$(( ($(stored) - stored0) >> 20 ))" \
        'BEGIN { printf "%-40s %7.2f s  mount CPU %6.2f s  stored %6d MiB\n", label, t, cpu, mib }'
}

PYSPY=$(command -v .venv/bin/py-spy || command -v py-spy || true)
spy_on() {  # spy_on PIDFILE OUT: py-spy records the process into OUT until stopped
    "$PYSPY" record --pid "$(cat "$1")" --rate 250 --format raw --nonblocking -o "$2" >/dev/null 2>&1 &
    SPIES+=("$!")
}

top_frames() {  # the frames most samples of a raw py-spy profile are in (self, and with callees)
    python3 - "$1" <<'EOF'
import collections, sys
own, within, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
    if not frames:
        continue
    n = int(count)
    total += n
    own[frames[-1]] += n
    for frame in set(frames):
        within[frame] += n
print(f"  {total} samples; by own time:")
for frame, n in own.most_common(8):
    print(f"  {100 * n / total:5.1f}%  {frame}")
print("  with callees:")
for frame, n in within.most_common(14):
    print(f"  {100 * n / total:5.1f}%  {frame}")
EOF
}

copy "first copy (dedup on)" "$ROOT/one" "$MNT/on/a"
meta_cpu0=$(cpu_of "$DIR/run/metaserver.pid")
if [ -n "$PROFILE_DIR" ] && [ -n "$PYSPY" ]; then
    mkdir -p "$PROFILE_DIR"
    spy_on "$DIR/run/mount.pid" "$PROFILE_DIR/mount.txt"
    spy_on "$DIR/run/metaserver.pid" "$PROFILE_DIR/metaserver.txt"
    sleep 1
fi
copy "second copy, same bytes (dedup on)" "$ROOT/one" "$MNT/on/b"
echo "  (the metaserver's CPU meanwhile: $(awk -v a="$meta_cpu0" -v b="$(cpu_of "$DIR/run/metaserver.pid")" \
    'BEGIN { printf "%.2f", b - a }') s)"
if [ "${#SPIES[@]}" -gt 0 ]; then
    for spy in "${SPIES[@]}"; do kill -INT "$spy" 2>/dev/null || true; wait "$spy" || true; done
    SPIES=()
    for who in mount metaserver; do
        echo "py-spy, the $who during the second copy:"
        top_frames "$PROFILE_DIR/$who.txt"
    done
fi
copy "other bytes (dedup off)" "$ROOT/other" "$MNT/off/c"
cmp "$ROOT/one" "$MNT/on/b"

on_total=0; off_total=0
for i in $(seq 1 "$PAIRS"); do
    order="on off"; [ $((i % 2)) -eq 0 ] && order="off on"
    for setting in $order; do
        copy "unique$i, dedup $setting" "$ROOT/unique$i" "$MNT/$setting/unique$i"
        if [ "$setting" = on ]; then on_total=$(awk -v a="$on_total" -v b="$LAST_CPU" 'BEGIN { print a + b }')
        else off_total=$(awk -v a="$off_total" -v b="$LAST_CPU" 'BEGIN { print a + b }'); fi
    done
    rm -f "$MNT/on/unique$i" "$MNT/off/unique$i"  # room (trash time 0)
done
[ "$PAIRS" -gt 0 ] && awk -v on="$on_total" -v off="$off_total" -v n="$PAIRS" 'BEGIN {
    printf "unique bytes, the mount'"'"'s CPU per copy: dedup on %.2f s, off %.2f s (mean of %d): %+.1f%%\n",
        on / n, off / n, n, 100 * (on / off - 1) }'
"$CHUNKFS" status --dir "$DIR" --json | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(f\"logical {s['chunk_bytes'] >> 20} MiB, physical {s['stored_bytes'] >> 20} MiB (one replica each), \"
      f\"ratio {s['chunk_bytes'] / s['stored_bytes']:.2f}\")"
