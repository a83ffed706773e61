#!/usr/bin/env bash
# The demo (`make demo`): two VMs on two lab nodes (anti-affinity group; placement spreads them
# over node1, which keeps disks in files, and a node keeping them in the lab's Ceph pool), wait
# until each is ready (address, SSH, cloud-init), log into each with the injected key, list (CLI
# and HTTP API), see the nodes and the pool's room, take a snapshot, read the audit log,
# reconcile, delete, list again.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(lab/lab env)"
export PATH="$PWD/.venv/bin:$PATH"
if [[ -t 2 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain" >&2; "$@"; }

trap 'vmctl delete --yes demo-1 demo-2 >/dev/null 2>&1 || true' EXIT
step vmctl nodes
step vmctl create demo --count 2 --group demo --project demo --ram 512 --cpu 1 --disk 2 --wait --timeout 600
for vm in demo-1 demo-2; do
  step vmctl ssh "$vm" -- 'echo "$(hostname): $(nproc) vCPU, $(df -h --output=size /dataxfs | tail -1) data disk"'
done
step vmctl list
step vmctl nodes
# The same VMs through the HTTP API (HAProxy, TLS), as programs see them: the prototype's contract.
printf '\n%s$ curl --cacert "$VMCTL_API_CA" -H "Authorization: Bearer $VMCTL_API_TOKEN" "$VMCTL_API_URL/api/v1/vm"%s\n' "$bold" "$plain" >&2
curl -sS --fail --cacert "$VMCTL_API_CA" -H "Authorization: Bearer $VMCTL_API_TOKEN" \
  "$VMCTL_API_URL/api/v1/vm"
echo
# Day 2: a snapshot of a running VM (frozen through its guest agent), the audit log, and a
# reconcile of PostgreSQL, the nodes and Redis (exit 4 on drift: a used lab may hold some).
step vmctl snapshot create demo-1 first
step vmctl events demo-1
step vmctl reconcile || echo "demo: reconcile found drift (exit $?); \`vmctl reconcile --fix\` repairs what is safe" >&2
step vmctl delete --yes demo-1 demo-2
step vmctl list
trap - EXIT
echo >&2
echo "demo: done. The lab is still up: lab/lab status; eval \"\$(lab/lab env)\"; lab/lab down" >&2
