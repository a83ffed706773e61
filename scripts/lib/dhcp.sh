# shellcheck shell=bash disable=SC2154  # net and virsh come from the script that uses these
# scripts/lib/dhcp.sh — helpers for a libvirt network's DHCP, shared by create-vm.sh and
# delete-vm.sh. vmctl sends this text ahead of the script (`bash -c "LIB; SCRIPT"`); a script run
# by hand reads it from here. Needs: the function virsh and the variable net (the network name).

# dhcp_hosts SCOPE: the <host> entries under <dhcp> of network $net, from its running state
# (SCOPE live) or its persistent definition (SCOPE config), into the arrays H_MAC (lower case),
# H_IP and H_NAME ('' where an attribute is absent). Attribute order and quote style do not matter.
dhcp_hosts() {
  local xml line in_dhcp=0 a
  local -a opt=()
  [[ $1 == config ]] && opt=(--inactive)
  xml=$(virsh net-dumpxml --network "$net" "${opt[@]}")
  H_MAC=() H_IP=() H_NAME=()
  while IFS= read -r line; do
    case $line in
      *'<dhcp>'* | *'<dhcp '*) in_dhcp=1 ;;
      *'</dhcp>'*) in_dhcp=0 ;;
    esac
    if ((in_dhcp)) && [[ $line =~ \<host[[:space:]] ]]; then
      for a in mac ip name; do
        if [[ $line =~ [[:space:]]$a=(\"([^\"]*)\"|\'([^\']*)\') ]]; then
          REPLY=${BASH_REMATCH[2]}${BASH_REMATCH[3]}
        else
          REPLY=''
        fi
        case $a in
          mac) H_MAC+=("${REPLY,,}") ;;
          ip) H_IP+=("$REPLY") ;;
          name) H_NAME+=("$REPLY") ;;
        esac
      done
    fi
  done <<<"$xml"
}

# host_xml I: entry I of dhcp_hosts as an XML <host> with the attributes it has, which is what
# `virsh net-update ... delete ip-dhcp-host` matches (all given attributes must match).
host_xml() {
  local attrs=''
  [[ -z ${H_MAC[$1]} ]] || attrs+=" mac='${H_MAC[$1]}'"
  [[ -z ${H_NAME[$1]} ]] || attrs+=" name='${H_NAME[$1]}'"
  [[ -z ${H_IP[$1]} ]] || attrs+=" ip='${H_IP[$1]}'"
  REPLY="<host$attrs/>"
}

# dhcp_leases: current IPv4 leases of network $net into the arrays L_MAC (lower case) and L_IP.
# `virsh net-dhcp-leases` rows: expiry date, expiry time, MAC, protocol, IP/prefix, hostname, id.
dhcp_leases() {
  local out k
  local -a f
  out=$(virsh net-dhcp-leases --network "$net")
  L_MAC=() L_IP=()
  while read -r -a f; do
    for ((k = 0; k + 2 < ${#f[@]}; k++)); do
      if [[ ${f[k]} =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ && ${f[k + 1]} == ipv4 ]]; then
        L_MAC+=("${f[k],,}") L_IP+=("${f[k + 2]%/*}")
        break
      fi
    done
  done <<<"$out"
}
