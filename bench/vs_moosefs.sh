#!/usr/bin/env bash
# chunkfs beside MooseFS 3 and a plain pyfuse3 passthrough, in one run, on one machine: a local
# chunkfs cluster (3 chunkservers, goal 2), a MooseFS cluster of the same shape from Debian's
# moosefs-master, moosefs-chunkserver and moosefs-client packages (3 chunkservers, `mfssetgoal -r
# 2`) and bench/passthrough.py over a local directory. `chunkfs bench` runs the same workloads
# in each and prints each figure and the ratios chunkfs / MooseFS and chunkfs / passthrough.
# Extra arguments go to `chunkfs bench` (default: --only small --only tree --files 1000).
# Root only (mfsmount). Everything goes down again however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CHUNKFS=.venv/bin/chunkfs
ROOT=${CHUNKFS_BENCH_ROOT:-/tmp/chunkfs-vs-moosefs}
PORT=${CHUNKFS_BENCH_PORT:-19720}
MFS_PORT=${MFS_BENCH_PORT:-19820}  # master: +0 chunkservers, +1 clients, +2 admin; chunkservers +3..+5
MFS=$ROOT/moosefs
# a chunkserver refuses a loopback master address: the host's first other address
MFS_HOST=${MFS_BENCH_HOST:-$(hostname -I | awk '{print $1}')}
PASSTHROUGH_SOURCE=$ROOT/passthrough-source
PASSTHROUGH=$ROOT/passthrough
passthrough_pid=
[ $# -gt 0 ] || set -- --only small --only tree --files 1000

for tool in mfsmaster mfschunkserver mfsmount mfssetgoal; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install moosefs-master moosefs-chunkserver moosefs-client" >&2; exit 2; }
done

cleanup() {
    fusermount3 -u "$MFS/mnt" 2>/dev/null || umount -l "$MFS/mnt" 2>/dev/null || true
    for i in 1 2 3; do
        [ -f "$MFS/cs$i.cfg" ] && mfschunkserver -c "$MFS/cs$i.cfg" stop >/dev/null 2>&1 || true
    done
    [ -f "$MFS/master.cfg" ] && mfsmaster -c "$MFS/master.cfg" stop >/dev/null 2>&1 || true
    if [ -n "$passthrough_pid" ]; then
        fusermount3 -u "$PASSTHROUGH" 2>/dev/null || true
        kill "$passthrough_pid" 2>/dev/null || true
        wait "$passthrough_pid" 2>/dev/null || true
    fi
    "$CHUNKFS" down --dir "$ROOT/.chunkfs" || true
    rm -rf "$MFS" "$PASSTHROUGH_SOURCE"
}
trap cleanup EXIT

# ---- MooseFS: a master and three chunkservers, each a directory of its own under $MFS -------------
mkdir -p "$MFS/master" "$MFS/mnt"
cp /var/lib/mfs/metadata.mfs.empty "$MFS/master/metadata.mfs" 2>/dev/null \
    || cp /usr/share/doc/moosefs-master/examples/metadata.mfs.empty "$MFS/master/metadata.mfs" 2>/dev/null \
    || printf 'MFSM NEW' > "$MFS/master/metadata.mfs"
echo "$MFS_HOST/32 / rw,alldirs,maproot=0" > "$MFS/exports.cfg"
cat > "$MFS/master.cfg" <<EOF
DATA_PATH = $MFS/master
EXPORTS_FILENAME = $MFS/exports.cfg
MATOCS_LISTEN_PORT = $MFS_PORT
MATOCL_LISTEN_PORT = $((MFS_PORT + 1))
MATOML_LISTEN_PORT = $((MFS_PORT + 2))
LOCK_MEMORY = 0
EOF
chown -R mfs:mfs "$MFS" 2>/dev/null || true
mfsmaster -c "$MFS/master.cfg" start
for i in 1 2 3; do
    mkdir -p "$MFS/cs$i/data" "$MFS/cs$i/hdd"
    echo "$MFS/cs$i/hdd" > "$MFS/cs$i/hdd.cfg"
    cat > "$MFS/cs$i.cfg" <<EOF
DATA_PATH = $MFS/cs$i/data
HDD_CONF_FILENAME = $MFS/cs$i/hdd.cfg
MASTER_HOST = $MFS_HOST
MASTER_PORT = $MFS_PORT
CSSERV_LISTEN_PORT = $((MFS_PORT + 2 + i))
EOF
    chown -R mfs:mfs "$MFS/cs$i" 2>/dev/null || true
    mfschunkserver -c "$MFS/cs$i.cfg" start
done
mfsmount "$MFS/mnt" -H "$MFS_HOST" -P $((MFS_PORT + 1)) -S /
sleep 3  # the chunkservers register with the master
mfssetgoal -r 2 "$MFS/mnt" >/dev/null

# ---- the passthrough and chunkfs -------------------------------------------------------------------
mkdir -p "$PASSTHROUGH_SOURCE" "$PASSTHROUGH"
.venv/bin/python bench/passthrough.py "$PASSTHROUGH_SOURCE" "$PASSTHROUGH" &
passthrough_pid=$!
for _ in $(seq 100); do
    mountpoint -q "$PASSTHROUGH" && break
    sleep 0.1
done
"$CHUNKFS" up --dir "$ROOT/.chunkfs" --mount "$ROOT/mnt" --goal 2 --port "$PORT" --no-gateway >/dev/null
"$CHUNKFS" bench "$ROOT/mnt" --compare "$MFS/mnt" --compare "$PASSTHROUGH" "$@"
