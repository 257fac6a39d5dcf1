#!/usr/bin/env bash
# A chunkfs cluster in network namespaces (metaserver, five chunkservers, two clients, each its
# own host on a private bridge), for trying faults by hand (root only):
#   bench/netns_cluster.sh up DIR [--chunkservers N] [--clients N] [--goal N]
#   bench/netns_cluster.sh down DIR
# `up` prints the addresses, namespaces and commands to cut a link; see tests/netns_cluster.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/netns_cluster.py "$@"
