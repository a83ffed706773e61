#!/usr/bin/env bash
# Boot a lab image once under QEMU software emulation (TCG) and time it to the first SSH login.
#
#   lab/image/boot-test.sh [--no-netcfg] [--timeout SECONDS] [--keep] [--hold] [IMAGE_DIR]
#
# IMAGE_DIR defaults to the cached image of the current recipe (build.sh builds it if needed).
# The guest boots from its own disk (SeaBIOS -> GRUB) on a 4 GiB qcow2 overlay, with a NoCloud
# seed (hostname, a throwaway ed25519 key, network-config matching the NIC's MAC unless
# --no-netcfg) on a read-only virtio disk, and user-mode networking with restrict=on: the guest
# has no way out; the only traffic is ssh to a forwarded port on 127.0.0.1.
# stdout: ssh_seconds=N.N, checks, systemd-analyze output. Progress and failures: stderr.
# The serial console goes to console.log in the temp dir, each line stamped with seconds since
# qemu started (--keep keeps the dir; --hold keeps the guest running until Ctrl-C).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
netcfg=1 timeout=300 keep=0 hold=0 image=""
mem_mib=256 overlay_size=4G

usage() {
  echo "usage: $0 [--no-netcfg] [--timeout SECONDS] [--keep] [--hold] [IMAGE_DIR]" >&2
}
while (($#)); do
  case $1 in
    --no-netcfg) netcfg=0 ;;
    --timeout) timeout=$2; shift ;;
    --keep) keep=1 ;;
    --hold) hold=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) usage; exit 2 ;;
    *) image=$1 ;;
  esac
  shift
done
[[ -n $image ]] || image=$("$here/build.sh")
[[ -f $image/manifest.json && -f $image/disk.qcow2 ]] || { echo "not an image dir: $image" >&2; exit 2; }
image=$(cd "$image" && pwd)

log() { printf '%s boot-test: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

tmp=$(mktemp -d /tmp/vmctl-boot-test.XXXXXX)
qemu_pid="" console_pid=""
cleanup() {
  local rc=$? pid
  for pid in $qemu_pid $console_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if ((keep)); then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- seed: a throwaway key, a random hostname, MAC-matched network-config -----------------------
ssh-keygen -q -t ed25519 -N '' -C vmctl-boot-test -f "$tmp/id_ed25519"
suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
hostname=boot-test-$suffix
mac=52:54:00:${suffix:0:2}:${suffix:2:2}:${suffix:4:2}
mkdir "$tmp/seed"
cat >"$tmp/seed/meta-data" <<EOF
instance-id: iid-$suffix
local-hostname: $hostname
EOF
cat >"$tmp/seed/user-data" <<EOF
#cloud-config
hostname: $hostname
ssh_authorized_keys:
  - $(cat "$tmp/id_ed25519.pub")
EOF
if ((netcfg)); then
  cat >"$tmp/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      macaddress: "$mac"
    set-name: eth0
    dhcp4: true
EOF
fi
genisoimage -quiet -output "$tmp/seed.iso" -V cidata -J -r "$tmp/seed"
qemu-img create -q -f qcow2 -b "$image/disk.qcow2" -F qcow2 "$tmp/root.qcow2" "$overlay_size"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh_opts=(-F /dev/null -i "$tmp/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$tmp/known_hosts" -o GlobalKnownHostsFile=/dev/null
  -o StrictHostKeyChecking=accept-new -o ConnectTimeout=5 -o LogLevel=ERROR
  -p "$port" debian@127.0.0.1)
guest() { ssh "${ssh_opts[@]}" "$@"; }

# --- boot -----------------------------------------------------------------------------------------
log "booting $image (tcg, ${mem_mib} MiB, ssh on 127.0.0.1:$port, seed network-config: $netcfg)"
start=$(date +%s.%N)
# Serial console -> console.log, each line stamped with seconds since $start.
python3 -u - "$tmp/console.sock" "$tmp/console.log" "$start" <<'EOF' &
import socket, sys, time
path, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
conn, _ = srv.accept()
with open(out, "w") as log:
    pending = b""
    while data := conn.recv(4096):
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").replace("\r", "")
            log.write(f"[+{time.time() - start:7.3f}] {text}\n")
        log.flush()
EOF
console_pid=$!
for _ in $(seq 50); do [[ -S $tmp/console.sock ]] && break; sleep 0.1; done
qemu-system-x86_64 -name "vmctl-boot-test-$suffix" -machine pc -accel tcg,tb-size=128 \
  -m "$mem_mib" -smp 1 -nodefaults -no-user-config -display none \
  -chardev "socket,id=console,path=$tmp/console.sock,server=off" -serial chardev:console \
  -drive "if=none,id=root,file=$tmp/root.qcow2,format=qcow2" \
  -device virtio-blk-pci,drive=root,bootindex=0 \
  -drive "if=none,id=seed,file=$tmp/seed.iso,format=raw,readonly=on" \
  -device virtio-blk-pci,drive=seed \
  -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" \
  -device "virtio-net-pci,netdev=n0,mac=$mac" \
  -device virtio-serial-pci \
  -chardev "socket,id=qga0,path=$tmp/qga.sock,server=on,wait=off" \
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  </dev/null >"$tmp/qemu.log" 2>&1 &
qemu_pid=$!

elapsed() { python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start"; }
while :; do
  if got=$(guest hostname 2>/dev/null); then
    ssh_seconds=$(elapsed)
    break
  fi
  if ! kill -0 "$qemu_pid" 2>/dev/null; then
    log "qemu exited early:"; cat "$tmp/qemu.log" >&2; exit 1
  fi
  if (($(date +%s) - ${start%.*} > timeout)); then
    log "no ssh login after ${timeout}s; console tail:"
    tail -n 40 "$tmp/console.log" | tr -d '\r' >&2
    exit 1
  fi
  sleep 0.5
done

echo "ssh_seconds=$ssh_seconds"
# cloud-init prints the kernel's uptime; the difference to host time is firmware + GRUB.
python3 - "$tmp/console.log" <<'EOF' || true
import re, sys
for line in open(sys.argv[1]):
    m = re.match(r"\[\+\s*([0-9.]+)\] .*Up ([0-9.]+) seconds", line)
    if m:
        print(f"kernel_started_at={float(m[1]) - float(m[2]):.1f}")
        break
EOF
status=0
if [[ $got == "$hostname" ]]; then
  echo "hostname=$got (ok)"
else
  echo "hostname=$got (expected $hostname)"; status=1
fi

# --- what the guest says about its boot -----------------------------------------------------------
guest 'sudo systemctl is-system-running --wait >/dev/null 2>&1; sudo cloud-init status --wait >/dev/null 2>&1
  echo "cloud_init=$(sudo cloud-init status 2>&1 | sed -n "s/^status: //p")"
  echo "root_size_bytes=$(df -B1 --output=size / | tail -n 1 | tr -d " ")"
  echo "host_keys=$(cd /etc/ssh && ls ssh_host_*_key | tr "\n" " ")"
  echo "qemu_guest_agent=$(systemctl is-active qemu-guest-agent)"
  echo "network=$(ip -4 -o addr show dev eth0 | awk "{print \$4}") via $(ls /run/systemd/network/ /etc/systemd/network/ 2>/dev/null | grep -m1 cloud-init)"
  echo; systemd-analyze; echo; systemd-analyze blame | head -n 15
  echo; systemd-analyze critical-chain ssh.service | tail -n +3' || status=1

# The agent answers on the virtio-serial channel, as `virsh domifaddr --source agent` needs.
python3 - "$tmp/qga.sock" <<'EOF' || status=1
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile("rwb")
def cmd(name, **arguments):
    f.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
    f.flush()
    return json.loads(f.readline())
sync_id = 4711
while cmd("guest-sync", id=sync_id).get("return") != sync_id:
    pass
ifaces = cmd("guest-network-get-interfaces")["return"]
addrs = [a["ip-address"] for i in ifaces if i["name"] != "lo"
         for a in i.get("ip-addresses", []) if a["ip-address-type"] == "ipv4"]
print("agent_ipv4=" + ",".join(addrs))
EOF

root_size=$(guest 'df -B1 --output=size / | tail -n 1' 2>/dev/null | tr -d ' ')
if ((root_size < 3 * 1024 * 1024 * 1024)); then
  echo "root filesystem not grown to the overlay ($root_size bytes)"; status=1
fi
if ((hold)); then
  log "holding: ssh ${ssh_opts[*]}"
  log "console: $tmp/console.log; Ctrl-C (or kill $$) to stop"
  wait "$qemu_pid" || true
fi
exit $status
