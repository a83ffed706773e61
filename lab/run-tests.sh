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
if (($#)); then
  exec .venv/bin/pytest "$@"
fi
# The deploy/ansible test (~5 min, mostly package installs) runs on the bare hosts alongside the
# rest of the suite: it shares nothing else with it (its own hosts, their own PostgreSQL). The
# test that takes the lab down waits for both.
deploy=tests/e2e/test_deploy_ansible.py
deploy_log=$(mktemp /tmp/vmctl-deploy-tests.XXXXXX)
.venv/bin/pytest -p no:cacheprovider "$deploy" >"$deploy_log" 2>&1 &
deploy_pid=$!
rc=0
.venv/bin/pytest --ignore="$deploy" -m "not lab_teardown" || rc=$?
deploy_rc=0
wait "$deploy_pid" || deploy_rc=$?
echo "run-tests: $deploy (run alongside the suite above; exit $deploy_rc):" >&2
cat "$deploy_log" >&2
rm -f "$deploy_log"
teardown_rc=0
.venv/bin/pytest -m lab_teardown || teardown_rc=$?
((teardown_rc == 5)) && teardown_rc=0 # no test selected
exit $((rc || deploy_rc || teardown_rc))
