#!/usr/bin/env bash
# The whole test suite: unit, integration (real etcd) and end-to-end (network namespaces).
# Installs what it needs first. Run as root:  sudo ./test.sh   (extra args go to pytest)
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps
exec "${PYTHON:-python3}" -m pytest tests -rfEs --durations=15 "$@"
