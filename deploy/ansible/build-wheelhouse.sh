#!/usr/bin/env bash
# The vmctl wheel and every wheel it depends on, in one directory, for managers that install
# without reaching PyPI (the vmctl_manager role's vmctl_manager_wheelhouse):
#   deploy/ansible/build-wheelhouse.sh DIR [PIP]
# Build it on a machine with the managers' Python (Debian 12: 3.11) and architecture. PIP is the
# pip to use (default: python3 -m pip); it reads its usual configuration (index, proxy).
# The last line printed is the vmctl wheel's path.
set -euo pipefail
dest=${1:?usage: build-wheelhouse.sh DIR [PIP]}
pip=${2:-python3 -m pip}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dest"
$pip wheel -q --no-deps -w "$dest" "$repo" >&2
wheel=$(ls -t "$dest"/vmctl-*.whl | head -1)
$pip wheel -q -w "$dest" "$wheel" >&2
echo "$wheel"
