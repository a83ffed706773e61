#!/usr/bin/env bash
# The whole test suite: lint and types, unit tests, then the lab (up) and the integration and
# end-to-end tests against it. The lab is taken down at the end whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check vmctl lab tests bench
.venv/bin/ruff format --check vmctl lab tests bench
.venv/bin/mypy
.venv/bin/lint-imports
trap 'lab/lab down || true' EXIT
lab/lab up
.venv/bin/pytest "$@"
