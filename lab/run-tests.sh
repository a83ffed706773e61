#!/usr/bin/env bash
# The whole test suite: lint, types and the import contracts, unit tests, then the lab (up) and the
# integration and end-to-end tests against it.
# A lab that was already up (after `make demo`, or someone's own VMs on it) is used as it is and
# kept; a lab this run brought up is taken down at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check vmctl lab tests bench
.venv/bin/ruff format --check vmctl lab tests bench
.venv/bin/mypy
.venv/bin/lint-imports
# (the status is read whole first: `grep -q` ending the pipe early would fail it under pipefail)
status=$(lab/lab status --json 2>/dev/null || true)
if [[ $status == *'"running": true'* ]]; then
  echo "run-tests: the lab is up already: using it and keeping it (lab/lab down removes it)" >&2
  export VMCTL_LAB_KEEP=1
else
  trap 'lab/lab down || true' EXIT
fi
lab/lab up --bare  # with the bare hosts deploy/ansible is tested on
.venv/bin/pytest "$@"
