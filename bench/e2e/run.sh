#!/usr/bin/env bash
# End-to-end boot and install timings, per firmware mode, next to the
# reference timings of a minimal PXE lab (a stand-in agent that only boots
# and reports; same kind of machine: TCG, 2 cores). Runs the e2e provisioning scenarios (real VM, real
# allinone, see e2e/provision_test.go) RUNS times and prints, per mode,
# seconds from QEMU start to the hardware report and from the approval
# (REST) to the task's completed status: min / median / max.
#
# The lab network has no IPv6 router, like most provisioning networks. The
# region answers IPv6 router solicitations itself (package ndp, on by
# default), which is what lets iPXE skip its wait for IPv6. BIOS and UEFI
# are also booted with it off (--ipv6-ra=false): once with no IPv6 router at
# all (what the region's responder saves) and once with a real one
# (dnsmasq sending RAs with a prefix: what a site with IPv6 sees, where
# the responder should be off).
#
#   bench/e2e/run.sh            # from the module root, as root (namespaces, QEMU)
#
# Knobs (environment): RUNS (3) runs of each scenario; LPMOS_E2E_ACCEL=kvm
# to use KVM where it works; COMPARE=0 skips the runs without the region's
# responder. The recipe measured boot only (its agent is a stand-in), so it
# has no figure for approval -> completed. Every run is bounded by go
# test's -timeout; the lab is torn down by the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
COMPARE=${COMPARE:-1}
for tool in go qemu-system-x86_64 ip dnsmasq rdisc6; do
	command -v "$tool" >/dev/null || { echo "missing $tool: run ./scripts/test.sh once (it installs the lab's packages)" >&2; exit 1; }
done

out=$(mktemp /tmp/e2ebench.XXXXXX)
trap 'rm -f "$out"' EXIT
# run NAME REGEX [ENV=VALUE...]: RUNS runs of the scenarios matching REGEX.
run() {
	local name=$1 re=$2
	shift 2
	for i in $(seq 1 "$RUNS"); do
		echo "$name: run $i/$RUNS ..." >&2
		env "$@" go test -count=1 -timeout 20m -run "$re" -v ./e2e/ >>"$out" 2>&1 ||
			{ echo "e2e run $i ($name) failed; its output:" >&2; tail -50 "$out" >&2; exit 1; }
	done
}
run "region RA" '^TestProvision(BIOS|UEFI|UEFIHTTP|ProxyDHCP)$'
if [ "$COMPARE" = 1 ]; then
	run "no IPv6 router" '^TestProvision(BIOS|UEFI)$' LPMOS_E2E_REGION_RA=off
	run "IPv6 router" '^TestProvision(BIOS|UEFI)$' LPMOS_E2E_REGION_RA=off LPMOS_E2E_IPV6_ROUTER=dnsmasq
fi

# Reference (the minimal lab): QEMU start -> agent report, seconds.
declare -A ref=([bios]="7.4-10.4" [uefi]="15.3-18.6" [uefi-http]="15.3-18.6" [bios+proxydhcp]="7.4-10.4 (bios)")
declare -A target=([bios]="<= 10" [uefi]="<= 20" [uefi-http]="-" [bios+proxydhcp]="-")

stats() { # min median max of the numbers on stdin
	sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit}; printf "%.1f / %.1f / %.1f", a[1], a[int((NR+1)/2)], a[NR]}'
}
# field MODE RA ROUTER FIELD: stats of FIELD over the matching timing lines.
field() {
	grep -o "E2E-TIMING mode=$1 .* region_ra=$2 ipv6_router=$3\$" "$out" |
		sed -n "s/.*$4=\([0-9.]*\).*/\1/p" | stats
}
echo "power-on -> hardware report, seconds (min / median / max):"
printf '%-16s %-20s %-20s %-20s %-8s %-18s\n' mode "region RA" "no IPv6 router" "IPv6 router" target recipe
for mode in bios uefi uefi-http bios+proxydhcp; do
	printf '%-16s %-20s %-20s %-20s %-8s %-18s\n' "$mode" "$(field "$mode" true none poweron_to_report)" \
		"$(field "$mode" false none poweron_to_report)" "$(field "$mode" false dnsmasq poweron_to_report)" \
		"${target[$mode]}" "${ref[$mode]}"
done
echo
echo "approval -> completed, seconds (region RA):"
for mode in bios uefi uefi-http bios+proxydhcp; do
	printf '%-16s %-20s\n' "$mode" "$(field "$mode" true none approval_to_completed)"
done
echo "($RUNS runs each; accel ${LPMOS_E2E_ACCEL:-tcg}; image: 8 MiB raw GPT, zstd, onto a 64 MiB virtio disk)"
