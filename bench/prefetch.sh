#!/usr/bin/env bash
# Does prefetch pay? Cold sequential reads (cat FILE > /dev/null) of 1, 3, 6, 24 and 256-chunk
# files on a local cluster (3 chunkservers, goal 1), with `-o prefetch=on` and `-o prefetch=off`.
# Every read is cold: a new mount (empty memory cache), no disk cache (cache_size_mb=0), and the
# kernel page cache dropped (as root; the chunkservers' files too). Prints the median of REPEAT
# reads. Environment: SIZES (chunks, default "1 3 6 24 256"), REPEAT (5), PORT (19620), ROOT.
# The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${ROOT:-/tmp/chunkfs-bench-prefetch}
PORT=${PORT:-19620}
SIZES=${SIZES:-"1 3 6 24 256"}
REPEAT=${REPEAT:-5}
CHUNK_MIB=4
DIR="$ROOT/.chunkfs"
MNT="$ROOT/mnt"

cleanup() {
    "$CHUNKFS" down --dir "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

mount_with() {  # mount_with on|off: a fresh mount of the running cluster
    local pid
    pid=$(cat "$DIR/run/mount.pid" 2>/dev/null || true)
    fusermount3 -u "$MNT" 2>/dev/null || true
    for _ in $(seq 100); do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    "$CHUNKFS" up --dir "$DIR" --mount "$MNT" --goal 1 --port "$PORT" \
        -o "cache_size_mb=0,prefetch=$1" >/dev/null
}

drop_page_cache() {
    sync
    if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cold_read_s() {  # cold_read_s FILE: seconds to read it once, cold
    local start end
    drop_page_cache
    start=$(date +%s.%N)
    cat "$1" > /dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

mkdir -p "$ROOT"
"$CHUNKFS" up --dir "$DIR" --mount "$MNT" --goal 1 --port "$PORT" -o cache_size_mb=0 >/dev/null
for n in $SIZES; do
    [ -f "$MNT/f$n" ] || head -c $((n * CHUNK_MIB * 1024 * 1024)) /dev/urandom > "$MNT/f$n"
done

declare -A seconds
for n in $SIZES; do
    on_runs=() off_runs=()
    for _ in $(seq "$REPEAT"); do  # on and off alternate, so a busy machine slows both alike
        mount_with on
        on_runs+=("$(cold_read_s "$MNT/f$n")")
        mount_with off
        off_runs+=("$(cold_read_s "$MNT/f$n")")
    done
    seconds[on,$n]=$(printf '%s\n' "${on_runs[@]}" | median)
    seconds[off,$n]=$(printf '%s\n' "${off_runs[@]}" | median)
done

[ "$(id -u)" = 0 ] || echo "(not root: the page cache was not dropped, reads are not cold)"
printf '%-7s %-8s %-22s %-22s %s\n' chunks MiB "prefetch on: s, MiB/s" "prefetch off: s, MiB/s" "on/off speed"
for n in $SIZES; do
    on=${seconds[on,$n]} off=${seconds[off,$n]}
    mib=$((n * CHUNK_MIB))
    printf '%-7s %-8s %-22s %-22s %s\n' "$n" "$mib" \
        "$(printf '%.3f, %.0f' "$on" "$(echo "$mib / $on" | bc -l)")" \
        "$(printf '%.3f, %.0f' "$off" "$(echo "$mib / $off" | bc -l)")" \
        "$(printf '%.2fx' "$(echo "$off / $on" | bc -l)")"
done
