#!/usr/bin/env bash
# 4 KiB random reads of a 1 GiB file on a local cluster (3 chunkservers, goal 2), with fio:
#   fio --rw=randread --bs=4k --size=1G --runtime=20 --time_based --numjobs=1|4 --direct=0
# Each run starts cold: the kernel's page cache dropped (as root) and the mount's chunk caches
# dropped (SIGUSR1). Prints IOPS, the CPU seconds the mount and the chunkservers spent (and per
# read, in us), the bytes the chunkservers sent per read and the load average (the figures mean
# little on a loaded machine: say the load with them; compare in alternated runs).
# CODE=DIR runs the daemons from another checkout's `chunkfs` package (PYTHONPATH), e.g. an
# export of main, to compare before and after in one sitting. Environment: PORT (19720), ROOT,
# RUNTIME_S (20), JOBS ("1 4": the numjobs to run), UP_OPTIONS (more `chunkfs up` options; `up`
# keeps those of the last `up` in ROOT, so say e.g. --scrub-mb-per-s 50 to get the default back).
# The cluster goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=$PWD/.venv/bin/python
ROOT=${ROOT:-/tmp/chunkfs-bench-random-read}
PORT=${PORT:-19720}
RUNTIME_S=${RUNTIME_S:-20}
DIR="$ROOT/.chunkfs"
MNT="$ROOT/mnt"
if [ -n "${CODE:-}" ]; then export PYTHONPATH=$CODE; fi
chunkfs() { (cd "$ROOT" && "$PYTHON" -m chunkfs.cli "$@"); }
cpu_s() { awk '{ t += $14 + $15 } END { printf "%.2f", t / 100 }' "$@"; }

mkdir -p "$ROOT"
trap 'chunkfs down --dir "$DIR" >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC2086  # UP_OPTIONS: words
chunkfs up --dir "$DIR" --mount "$MNT" --port "$PORT" --goal 2 ${UP_OPTIONS:-} >/dev/null
[ -f "$MNT/f" ] || fio --name=lay --filename="$MNT/f" --rw=write --bs=1M --size=1G >/dev/null
mount_pid=$(cat "$DIR/run/mount.pid")
stats() { echo "/proc/$mount_pid/stat"; for p in "$DIR"/run/cs*.pid; do echo "/proc/$(cat "$p")/stat"; done; }
sent() {  # bytes the chunkservers have sent, all together
    for i in 1 2 3; do curl -s "http://127.0.0.1:$((PORT + i))/metrics"; done |
        awk '/^chunkfs_chunkserver_read_bytes_total / { t += $2 } END { printf "%d", t }'
}
for jobs in ${JOBS:-1 4}; do
    sync; echo 3 > /proc/sys/vm/drop_caches; kill -USR1 "$mount_pid"; sleep 2
    mapfile -t files < <(stats)
    mount0=$(cpu_s "${files[0]}"); servers0=$(cpu_s "${files[@]:1}"); load0=$(cut -d' ' -f1 /proc/loadavg)
    sent0=$(sent)
    out=$(fio --name=r --filename="$MNT/f" --rw=randread --bs=4k --size=1G --runtime="$RUNTIME_S" --time_based \
              --numjobs="$jobs" --direct=0 --group_reporting)
    mount1=$(cpu_s "${files[0]}"); servers1=$(cpu_s "${files[@]:1}"); sent1=$(sent)
    iops=$(echo "$out" | grep -o 'IOPS=[0-9.k]*')
    reads=$(echo "$out" | grep -o 'issued rwts: total=[0-9]*' | cut -d= -f2)
    echo "numjobs=$jobs $iops mount_cpu_s=$(echo "$mount1 - $mount0" | bc) chunkservers_cpu_s=$(echo "$servers1 - $servers0" | bc)" \
         "mount_us_per_read=$(echo "($mount1 - $mount0) * 1000000 / $reads" | bc)" \
         "chunkservers_us_per_read=$(echo "($servers1 - $servers0) * 1000000 / $reads" | bc)" \
         "bytes_sent_per_read=$(( (sent1 - sent0) / reads ))" \
         "load=$load0..$(cut -d' ' -f1 /proc/loadavg)"
done
