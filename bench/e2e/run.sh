#!/usr/bin/env bash
# End-to-end boot and install timings, per firmware mode, next to the
# reference timings of a minimal PXE lab (a stand-in agent that only boots
# and reports; same kind of machine: TCG, 2 cores). Runs the e2e provisioning scenarios (real VM, real
# allinone, see e2e/provision_test.go) RUNS times and prints, per mode,
# seconds from QEMU start to the hardware report and from the approval
# (REST) to the task's completed status: min / median / max.
#
#   bench/e2e/run.sh            # from the module root, as root (namespaces, QEMU)
#
# Knobs (environment): RUNS (3) runs of each scenario; LPMOS_E2E_ACCEL=kvm
# to use KVM where it works. The recipe measured boot only (its agent is a
# stand-in), so it has no figure for approval -> completed. Every run is
# bounded by go test's -timeout; the lab is torn down by the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
for tool in go qemu-system-x86_64 ip dnsmasq; do
	command -v "$tool" >/dev/null || { echo "missing $tool: run ./scripts/test.sh once (it installs the lab's packages)" >&2; exit 1; }
done

out=$(mktemp /tmp/e2ebench.XXXXXX)
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$RUNS"); do
	echo "run $i/$RUNS ..." >&2
	go test -count=1 -timeout 20m -run '^TestProvision(BIOS|UEFI|UEFIHTTP|ProxyDHCP)$' -v ./e2e/ >>"$out" 2>&1 ||
		{ echo "e2e run $i failed; its output:" >&2; tail -50 "$out" >&2; exit 1; }
done

# Reference (the minimal lab): QEMU start -> agent report, seconds.
declare -A ref=([bios]="7.4-10.4" [uefi]="15.3-18.6" [uefi-http]="15.3-18.6" [bios+proxydhcp]="7.4-10.4 (bios)")

stats() { # min median max of the numbers on stdin
	sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit}; printf "%.1f / %.1f / %.1f", a[1], a[int((NR+1)/2)], a[NR]}'
}
printf '%-16s %-24s %-18s %-24s\n' mode "power-on -> report (s)" "recipe (s)" "approval -> completed (s)"
for mode in bios uefi uefi-http bios+proxydhcp; do
	lines=$(grep -o "E2E-TIMING mode=$mode .*" "$out" || true)
	rep=$(sed -n 's/.*poweron_to_report=\([0-9.]*\).*/\1/p' <<<"$lines" | stats)
	done_=$(sed -n 's/.*approval_to_completed=\([0-9.]*\).*/\1/p' <<<"$lines" | stats)
	printf '%-16s %-24s %-18s %-24s\n' "$mode" "$rep" "${ref[$mode]}" "$done_"
done
echo "($RUNS runs each; accel ${LPMOS_E2E_ACCEL:-tcg}; image: 8 MiB raw GPT, zstd, onto a 64 MiB virtio disk)"
