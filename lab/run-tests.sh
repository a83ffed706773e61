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
  # not `exec`: a lab this run brought up must still be taken down by the trap
  .venv/bin/pytest "$@"
  exit
fi
# Order, to keep the suite short on 2 cores (each emulated guest boot takes a core):
# 1. the end-to-end tests (they boot guests) run alone, while the packages of the deploy/ansible
#    test are fetched through the lab's proxy beside them (network, not CPU: ~10 min of
#    downloads on a fresh machine);
# 2. then the deploy/ansible test (~7 min, mostly package installs in the bare hosts, which run
#    at a low CPU weight) runs beside the unit and integration tests (no guest boots there).
#    Beside the end-to-end tests, one side's emulated guests missed their deadlines: a day-2
#    reboot of the suite's, or a VM on a prepared bare node that got no address in 300 s.
# 3. the lab-teardown test, last (it only runs when this run brought the lab up).
deploy=tests/e2e/test_deploy_ansible.py
warm_log=$(mktemp /tmp/vmctl-warm-bare.XXXXXX.log)
lab/lab warm-bare >"$warm_log" 2>&1 &
warm_pid=$!
rc=0
.venv/bin/pytest tests/e2e --ignore="$deploy" || rc=$?
wait "$warm_pid" || echo "run-tests: warning: lab/lab warm-bare failed (the deploy test fetches the packages itself): $(tail -3 "$warm_log")" >&2
rm -f "$warm_log"
deploy_log=$(mktemp /tmp/vmctl-deploy-test.XXXXXX.log)
.venv/bin/pytest -p no:cacheprovider "$deploy" >"$deploy_log" 2>&1 &
deploy_pid=$!
.venv/bin/pytest -p no:cacheprovider tests/unit tests/integration -m "not lab_teardown" || rc=$?
deploy_rc=0
wait "$deploy_pid" || deploy_rc=$?
echo "run-tests: the deploy/ansible test, run beside the unit and integration tests:"
cat "$deploy_log"
rm -f "$deploy_log"
teardown_rc=0
.venv/bin/pytest -p no:cacheprovider -m lab_teardown tests/integration/test_lab.py || teardown_rc=$?
((teardown_rc == 5)) && teardown_rc=0 # no test selected
exit $((rc || deploy_rc || teardown_rc))
