#!/usr/bin/env bash
# Boot storm: CLIENTS simulated BIOS PXE machines power on within RAMP (a
# rack powering on) and each does DHCP DORA, a TFTP read of undionly.kpxe
# (blksize 1468, no windowsize, as PXE ROMs do) and an HTTP GET of its iPXE
# script. Served first by LPMOS (examples/allinone, memory store, full-mode
# DHCP), then by dnsmasq (DHCP + TFTP) with a static HTTP server for the
# script; prints clients, failures and time-to-script percentiles side by
# side, with the UDP datagrams the kernel dropped in the servers' namespace
# because a receive buffer was full. Two network namespaces this script creates and always deletes; no
# traffic leaves them.
#
#   sudo bench/storm/run.sh                     # CLIENTS=500 RAMP=1s
#   CLIENTS=50 SERVERS=lpmos bench/storm/run.sh
#
# LPMOS runs with --unknown-machines discover: the 500 machines are new to
# it (no tasks), so DHCP answers them all and their script is the
# discovery (inventory) agent's, rendered per machine with a token bound to
# its leased address: the path a rack of new servers takes. dnsmasq's side
# serves the same kind of script as a static file (a copy of one the region
# rendered) from bench/pxe's file server, the usual dnsmasq + web server
# setup. dnsmasq gets --tftp-max=1000 (its default, 50 transfers at once,
# would refuse most of a storm) and --no-ping, as LPMOS does not ping.
#
# Needs root, iproute2, dnsmasq (dnsmasq-base), ipxe (/usr/lib/ipxe), curl
# and Go.
set -euo pipefail

CLIENTS=${CLIENTS:-500}
RAMP=${RAMP:-1s}
SERVERS=${SERVERS:-"lpmos dnsmasq"}

cd "$(dirname "$0")/../.."
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin

die() { echo "run.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
for tool in ip go curl; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y iproute2 curl; Go in /usr/local/go)"
done
[[ $SERVERS != *dnsmasq* ]] || command -v dnsmasq >/dev/null || die "dnsmasq not found (apt-get install -y dnsmasq-base)"
UNDI=/usr/lib/ipxe/undionly.kpxe
[[ -f $UNDI ]] || die "$UNDI not found (apt-get install -y ipxe)"

suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
SRV=lpt-ss-$suffix   # the servers' namespace
CLI=lpt-sc-$suffix   # the machines' namespace
WORK=$(mktemp -d /tmp/lpmos-storm-bench.XXXXXX)
pids=()

stop_servers() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	pids=()
}
cleanup() {
	stop_servers
	ip netns del "$SRV" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	[[ -n ${KEEP_WORK:-} ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SERVER_IP=10.201.0.1
POOL_FIRST=10.201.128.10 POOL_LAST=10.201.135.254
ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add veth0 type veth peer name veth0 netns "$CLI"
ip -n "$SRV" addr add $SERVER_IP/16 dev veth0
ip -n "$CLI" addr add 10.201.0.2/16 dev veth0
for ns in "$SRV" "$CLI"; do
	ip -n "$ns" link set lo up
	ip -n "$ns" link set veth0 up
done
# Every address of the pool is local to the machines' namespace, so each
# simulated machine can use the address it leased (the kernel answers ARP
# for them on veth0).
ip -n "$CLI" route add local 10.201.128.0/17 dev lo

echo "== building in $WORK" >&2
go build -o "$WORK/storm" ./bench/storm
[[ $SERVERS != *lpmos* ]] || go build -o "$WORK/allinone" ./examples/allinone
[[ $SERVERS != *dnsmasq* ]] || go build -o "$WORK/pxeserver" ./bench/pxe/server.go
mkdir -p "$WORK/tftp" "$WORK/http" "$WORK/lpmos-data/boot"
cp "$UNDI" "$WORK/tftp/undionly.kpxe"
SIZE=$(stat -c %s "$UNDI")
# The script dnsmasq's side serves until the region rendered a real one.
printf '#!ipxe\nchain http://%s:8089/boot/files/vmlinuz\n' $SERVER_IP >"$WORK/http/boot.ipxe"

# wait_for CMD...: up to 10 s until CMD succeeds in the servers' namespace
# while the last server started is alive.
wait_for() {
	for _ in $(seq 100); do
		if ip netns exec "$SRV" "$@" >/dev/null 2>&1; then return 0; fi
		kill -0 "${pids[-1]}" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

start_lpmos() {
	LPMOS_ADMIN_TOKEN=storm-bench-token ip netns exec "$SRV" "$WORK/allinone" --store memory \
		--data-dir "$WORK/lpmos-data" --listen-addr 127.0.0.1:8080 --region-listen :8081 --tftp-listen :69 \
		--dhcp-iface veth0 --dhcp-mode full --dhcp-range "$POOL_FIRST-$POOL_LAST" \
		--dhcp-lease-file "$WORK/lpmos-data/leases.json" --unknown-machines discover \
		--boot-dir "$WORK/lpmos-data/boot" --log-level warn >"$WORK/lpmos.log" 2>&1 &
	pids+=($!)
	wait_for curl -sf http://$SERVER_IP:8081/health || return 1
	wait_for sh -c "ss -Hlun 'sport = :67' | grep -q ." || return 1
	URL="http://$SERVER_IP:8081/boot/{mac}.ipxe?platform=pcbios"
}

start_dnsmasq() {
	ip netns exec "$SRV" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --bind-interfaces --interface=veth0 \
		--dhcp-range="$POOL_FIRST,$POOL_LAST,255.255.0.0,1h" --dhcp-authoritative --no-ping \
		--dhcp-lease-max=70000 --user=root --quiet-dhcp --quiet-tftp --dhcp-leasefile="$WORK/dnsmasq.leases" \
		--pid-file="$WORK/dnsmasq.pid" --enable-tftp --tftp-root="$WORK/tftp" --tftp-max=1000 \
		--dhcp-boot=undionly.kpxe >"$WORK/dnsmasq.log" 2>&1 &
	pids+=($!)
	wait_for sh -c "ss -Hlun 'sport = :67' | grep -q ." || return 1
	ip netns exec "$SRV" "$WORK/pxeserver" -tftp-root "$WORK/tftp" -tftp-addr 127.0.0.1:6969 \
		-http-root "$WORK/http" -http-addr $SERVER_IP:8089 >"$WORK/pxeserver.log" 2>&1 &
	pids+=($!)
	wait_for curl -sf http://$SERVER_IP:8089/boot/files/boot.ipxe || return 1
	URL="http://$SERVER_IP:8089/boot/files/boot.ipxe"
}

# rcvbuf_errors prints the UDP datagrams the kernel dropped in the servers'
# namespace because a socket's receive buffer was full.
rcvbuf_errors() {
	ip netns exec "$SRV" awk '$1 == "Udp:" { if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 } else print $col["RcvbufErrors"] }' /proc/net/snmp
}

declare -A result
for name in $SERVERS; do
	echo "== $name: $CLIENTS machines power on within $RAMP" >&2
	"start_$name" || { cat "$WORK"/*.log >&2 || true; die "$name did not start"; }
	rc=0
	kernel_before=$(rcvbuf_errors)
	ip netns exec "$CLI" timeout 600 "$WORK/storm" -iface veth0 -clients "$CLIENTS" -ramp "$RAMP" \
		-script-url "$URL" -boot-file-size "$SIZE" -label "$name" | tee "$WORK/$name.out" || rc=$?
	if [[ $name == lpmos ]]; then
		# Keep one script the region rendered (for a machine outside the
		# storm) as the script dnsmasq's side serves.
		ip netns exec "$SRV" curl -sf "http://$SERVER_IP:8081/boot/02:5b:ff:00:00:01.ipxe?platform=pcbios" \
			>"$WORK/http/boot.ipxe.new" && mv "$WORK/http/boot.ipxe.new" "$WORK/http/boot.ipxe" || true
	fi
	stop_servers
	((rc == 0)) || { cat "$WORK/$name.log" >&2 || true; die "the storm against $name failed (exit $rc)"; }
	result[$name]="$(awk '$1 == "RESULT" { print $3, $4, $5, $6, $7 }' "$WORK/$name.out") $(($(rcvbuf_errors) - kernel_before))"
	[[ ${result[$name]} == *" "*" "* ]] || die "no result against $name"
done

echo
echo "boot storm: $CLIENTS BIOS PXE machines within $RAMP (DORA, TFTP undionly.kpxe blksize 1468, HTTP script), $(nproc) CPUs, $(uname -r)"
printf "%-8s %8s %9s %10s %10s %10s %14s\n" server clients failures "p50 ms" "p95 ms" "p99 ms" "UDP buf drops"
for name in $SERVERS; do
	# shellcheck disable=SC2086
	printf "%-8s %8s %9s %10s %10s %10s %14s\n" "$name" ${result[$name]}
done
