#!/usr/bin/env bash
# Time to restore goal after losing a chunkserver holding N GiB, on a netns cluster (root only):
#   bench/restore_goal.sh --gib 1 [--heartbeat-timeout-s 10] [--verify] [--dir DIR]
# The cluster is taken down however the script ends; its data stays in the printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/restore_goal.py "$@"
