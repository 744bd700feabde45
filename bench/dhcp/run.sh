#!/usr/bin/env bash
# DHCPv4 DORA benchmark: LPMOS's dhcp.Server (full mode) against Kea and
# dnsmasq, one after the other, under the same perfdhcp load, in two network
# namespaces this script creates and always deletes.
#
#   sudo bench/dhcp/run.sh              # RATE=2000 DURATION=10 CLIENTS=20000
#   RATE=4000 DURATION=5 bench/dhcp/run.sh
#   SERVERS="lpmos kea" bench/dhcp/run.sh
#
# perfdhcp (Debian package kea-admin) sends as a DHCP relay: unicast from
# port 67 with giaddr set to its own address, so each server picks its pool
# by the relay's subnet and answers by unicast, as in a data center. Each
# exchange is a full DORA (DISCOVER, OFFER, REQUEST, ACK) for one of CLIENTS
# simulated MACs; the load is bounded by rate and time (-r, -p). All three
# servers lease from the same /16 pool, persist leases to a file (Kea:
# memfile CSV, dnsmasq: its lease file, lpmos: the JSON lease file) and run
# with their default threading.
#
# Needs root, iproute2, perfdhcp, kea-dhcp4 (kea-dhcp4-server), dnsmasq
# (dnsmasq-base) and Go. Traffic stays on a veth pair between the two
# namespaces.
set -euo pipefail

RATE=${RATE:-2000}          # DORA exchanges started per second
DURATION=${DURATION:-10}    # seconds of load
CLIENTS=${CLIENTS:-20000}   # distinct client MACs
SERVERS=${SERVERS:-"lpmos kea dnsmasq"}

cd "$(dirname "$0")/../.."
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin

die() { echo "run.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
for tool in ip perfdhcp go; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y iproute2 kea-admin; Go in /usr/local/go)"
done

suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
SRV=lpt-bs-$suffix   # the DHCP server's namespace
CLI=lpt-bc-$suffix   # perfdhcp's namespace
WORK=$(mktemp -d /tmp/lpmos-dhcp-bench.XXXXXX)
server_pid=""

cleanup() {
	if [[ -n $server_pid ]]; then kill -KILL "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
	ip netns del "$SRV" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	[[ -n ${KEEP_WORK:-} ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add veth0 type veth peer name veth0 netns "$CLI"
ip -n "$SRV" addr add 10.200.0.1/16 dev veth0
ip -n "$CLI" addr add 10.200.0.2/16 dev veth0
for ns in "$SRV" "$CLI"; do
	ip -n "$ns" link set lo up
	ip -n "$ns" link set veth0 up
done

POOL_FIRST=10.200.1.0 POOL_LAST=10.200.254.254

go build -o "$WORK/lpmos-dhcpd" bench/dhcp/lpmos-dhcpd/main.go

start_lpmos() {
	ip netns exec "$SRV" "$WORK/lpmos-dhcpd" -iface veth0 -range "$POOL_FIRST-$POOL_LAST" -mask 16 \
		-router 10.200.0.1 -lease-file "$WORK/lpmos-leases.json" >"$WORK/lpmos.log" 2>&1 &
	server_pid=$!
}

start_kea() {
	command -v kea-dhcp4 >/dev/null || die "kea-dhcp4 not found (apt-get install -y kea-dhcp4-server)"
	cat >"$WORK/kea-dhcp4.conf" <<-EOF
	{ "Dhcp4": {
	    "interfaces-config": { "interfaces": [ "veth0" ], "dhcp-socket-type": "udp" },
	    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea-leases4.csv", "lfc-interval": 0 },
	    "valid-lifetime": 3600,
	    "subnet4": [ { "id": 1, "subnet": "10.200.0.0/16",
	                   "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
	                   "option-data": [ { "name": "routers", "data": "10.200.0.1" } ] } ],
	    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
	                   "output_options": [ { "output": "$WORK/kea.log" } ] } ]
	} }
	EOF
	KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK \
		ip netns exec "$SRV" kea-dhcp4 -c "$WORK/kea-dhcp4.conf" >"$WORK/kea.out" 2>&1 &
	server_pid=$!
}

start_dnsmasq() {
	command -v dnsmasq >/dev/null || die "dnsmasq not found (apt-get install -y dnsmasq-base)"
	ip netns exec "$SRV" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --bind-interfaces --interface=veth0 \
		--dhcp-range="$POOL_FIRST,$POOL_LAST,255.255.0.0,1h" --dhcp-option=option:router,10.200.0.1 \
		--dhcp-authoritative --no-ping --dhcp-lease-max=70000 --user=root --quiet-dhcp \
		--dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" >"$WORK/dnsmasq.log" 2>&1 &
	server_pid=$!
}

# wait_bound waits until something listens on UDP port 67 in the server's
# namespace.
wait_bound() {
	for _ in $(seq 100); do
		if ip netns exec "$SRV" ss -Hlun 'sport = :67' | grep -q .; then return 0; fi
		kill -0 "$server_pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# field FILE SECTION KEY prints KEY's value in perfdhcp's report SECTION.
field() {
	awk -v sec="$2" -v key="$3" '
		/^\*\*\*Statistics for:/ { in_sec = index($0, sec) > 0 }
		in_sec && index($0, key ":") == 1 { sub(/^[^:]*: */, ""); sub(/ .*/, ""); print; exit }' "$1"
}

# rcvbuf_errors prints the UDP datagrams the kernel dropped in the server's
# namespace because a socket's receive buffer was full (per namespace).
rcvbuf_errors() {
	ip netns exec "$SRV" awk '$1 == "Udp:" { if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 } else print $col["RcvbufErrors"] }' /proc/net/snmp
}

declare -A result
for name in $SERVERS; do
	kernel_before=$(rcvbuf_errors)
	echo "== $name: perfdhcp -r $RATE -p $DURATION -R $CLIENTS" >&2
	"start_$name"
	wait_bound || { cat "$WORK"/"$name"*.log "$WORK"/"$name"*.out 2>/dev/null >&2 || true; die "$name did not start"; }
	rc=0
	ip netns exec "$CLI" perfdhcp -4 -r "$RATE" -p "$DURATION" -R "$CLIENTS" -W 200000 \
		-l 10.200.0.2 10.200.0.1 >"$WORK/$name.perf" 2>&1 || rc=$?
	kill -TERM "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
	# perfdhcp exits 3 when some exchanges did not complete: that is a
	# result, not a failure of the run.
	if ((rc != 0 && rc != 3)); then cat "$WORK/$name.perf" >&2; die "perfdhcp failed against $name (exit $rc)"; fi
	kernel_drops=$(($(rcvbuf_errors) - kernel_before))
	acks=$(field "$WORK/$name.perf" REQUEST-ACK "received packets")
	sent=$(field "$WORK/$name.perf" DISCOVER-OFFER "sent packets")
	result[$name]=$(awk -v acks="${acks:-0}" -v sent="${sent:-0}" -v dur="$DURATION" \
		-v do_drop="$(field "$WORK/$name.perf" DISCOVER-OFFER "drops ratio")" \
		-v ra_drop="$(field "$WORK/$name.perf" REQUEST-ACK "drops ratio")" \
		-v do_avg="$(field "$WORK/$name.perf" DISCOVER-OFFER "avg delay")" \
		-v ra_avg="$(field "$WORK/$name.perf" REQUEST-ACK "avg delay")" -v kdrops="$kernel_drops" \
		'BEGIN {
			lost = sent > 0 ? 100 * (sent - acks) / sent : 100
			printf "%-8s %10d %10d %12.0f %10.2f %10.2f %10.2f %12.3f %12.3f %12d\n",
				"", sent, acks, acks / dur, lost, do_drop, ra_drop, do_avg, ra_avg, kdrops
		}')
	if [[ $name == lpmos ]]; then grep -o 'stats="[^"]*"' "$WORK/lpmos.log" >&2 || true; fi
done

echo
echo "perfdhcp -4 -r $RATE -p $DURATION -R $CLIENTS (relayed), $(nproc) CPUs, $(uname -r)"
printf "%-8s %10s %10s %12s %10s %10s %10s %12s %12s %12s\n" server DISCOVERs ACKs "DORA/s" "lost %" "DO drop%" "RA drop%" "DO avg ms" "RA avg ms" "kernel drops"
for name in $SERVERS; do
	printf "%-8s%s\n" "$name" "${result[$name]:8}"
done
