#!/usr/bin/env bash
# A local demo cluster: etcd and 3 pyflannel nodes in network namespaces, pods on each,
# traffic across the overlay, leases and kernel entries shown, everything torn down after.
# Run as root:  sudo ./demo.sh
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps
exec "${PYTHON:-python3}" -m testbed.demo "$@"
