#!/usr/bin/env bash
# Installs what chunkfs needs on a fresh Debian machine: system packages (when root and missing),
# then the virtualenv .venv with chunkfs and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server, etcd-client (3.4): the metaservers' leader election, for failover (`chunkfs up --ha`)
packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev rsync attr acl iproute2 nftables sqlite3 git make
          etcd-server etcd-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages (install them as root): ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
PYFUSE3_VERSION=3.5.0  # as setup.cfg pins it: patches/pyfuse3-locks.patch is made against it
PYFUSE3_LOCKS_REVISION=3  # the patch's pyfuse3.LOCK_HANDLERS: a changed patch is built again
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pyfuse3 with lock handlers (getlk/setlk/flock; no release has them): its source release,
# pinned, with patches/pyfuse3-locks.patch applied, built here (Cython, 1-4 min), before the
# install below, which then finds pyfuse3==3.5.0 there
if ! .venv/bin/python -c "import pyfuse3, sys; sys.exit(getattr(pyfuse3, 'LOCK_HANDLERS', 0) != $PYFUSE3_LOCKS_REVISION)" 2>/dev/null; then
  echo "building pyfuse3 $PYFUSE3_VERSION with lock handlers"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  .venv/bin/pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$PYFUSE3_VERSION" -d "$build"
  tar -xzf "$build/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$build"
  (cd "$build/pyfuse3-$PYFUSE3_VERSION" && git apply -p1 "$OLDPWD/patches/pyfuse3-locks.patch")
  .venv/bin/pip install -q --no-deps --force-reinstall "$build/pyfuse3-$PYFUSE3_VERSION"
fi

stamp=.venv/.chunkfs-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
